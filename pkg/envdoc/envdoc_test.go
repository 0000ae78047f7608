package envdoc

import (
	"strings"
	"testing"
)

type sample struct {
	URL   string `env:"SAMPLE_URL" envDefault:"nats://x" help:"where to go"`
	Debug bool   `env:"SAMPLE_DEBUG" help:"log more"`
}

func TestWrite(t *testing.T) {
	var b strings.Builder
	if err := Write[sample](&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SAMPLE_URL", "nats://x", "where to go", "SAMPLE_DEBUG", "log more"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, b.String())
		}
	}
}
