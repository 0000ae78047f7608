package metrics

import (
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
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
