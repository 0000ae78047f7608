package metrics

import (
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestHandler(t *testing.T) {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "skiff_test_things_total", Help: "Things."})
	c.Add(3)
	h := Handler("skiff-test", "v1.2.3", slog.New(slog.DiscardHandler), c)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Result().Body)
	for _, want := range []string{
		"skiff_test_things_total 3",
		`skiff_test_build_info{version="v1.2.3"} 1`,
		"go_goroutines",
		"process_cpu_seconds_total",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestNamespace(t *testing.T) {
	for in, want := range map[string]string{"skiff-converter": "skiff_converter_", "skiff-agent": "skiff_agent_"} {
		if got := Namespace(in); got != want {
			t.Errorf("Namespace(%q) = %q, want %q", in, got, want)
		}
	}
}

// fixed is a collector of one counter and one labelled gauge, made with
// Descs and Senders as Skiff's collectors are.
type fixed struct{ things, load *prometheus.Desc }

func (f fixed) Describe(ch chan<- *prometheus.Desc) { ch <- f.things; ch <- f.load }

func (f fixed) Collect(ch chan<- prometheus.Metric) {
	counter, gauge := Senders(ch)
	counter(f.things, 3)
	gauge(f.load, 0.5, "a")
}

func TestDescsAndSenders(t *testing.T) {
	d := Descs("skiff_test_")
	c := fixed{things: d("things_total", "Things."), load: d("load", "Load, by kind.", "kind")}
	want := `
# HELP skiff_test_load Load, by kind.
# TYPE skiff_test_load gauge
skiff_test_load{kind="a"} 0.5
# HELP skiff_test_things_total Things.
# TYPE skiff_test_things_total counter
skiff_test_things_total 3
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}
