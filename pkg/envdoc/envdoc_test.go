package envdoc

import (
	"strings"
	"testing"

	"github.com/caarlos0/env/v11"
)

type sample struct {
	URL   string `env:"SAMPLE_URL" envDefault:"nats://x" help:"where to go"`
	Debug bool   `env:"SAMPLE_DEBUG" help:"log more"`
}

func TestWrite(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"", []string{"SAMPLE_URL", "nats://x", "where to go", "SAMPLE_DEBUG", "log more"}},
		{"APP_", []string{"APP_SAMPLE_URL", "nats://x", "where to go", "APP_SAMPLE_DEBUG", "log more"}},
	} {
		var b strings.Builder
		if err := Write[sample](&b, env.Options{Prefix: tc.prefix}); err != nil {
			t.Fatal(err)
		}
		for _, want := range tc.want {
			if !strings.Contains(b.String(), want) {
				t.Errorf("prefix %q: help lacks %q:\n%s", tc.prefix, want, b.String())
			}
		}
	}
}
