package config

import (
	"strings"
	"testing"
	"time"
)

func TestLoadDefaults(t *testing.T) {
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if c.Concurrency != 2 || c.MaxAttempts != 6 || c.AckWait != 30*time.Second || c.Listen != "127.0.0.1:8090" {
		t.Errorf("defaults: %+v", c)
	}
}

func TestLoadRejects(t *testing.T) {
	tests := []struct {
		name, key, value, want string
	}{
		{"zero concurrency", "SKIFF_CONVERTER_CONCURRENCY", "0", "CONCURRENCY"},
		{"not a number", "SKIFF_CONVERTER_CONCURRENCY", "many", "CONCURRENCY"},
		{"zero attempts", "SKIFF_CONVERTER_MAX_ATTEMPTS", "0", "MAX_ATTEMPTS"},
		{"short ack wait", "SKIFF_CONVERTER_ACK_WAIT", "10ms", "ACK_WAIT"},
		{"backoff above max", "SKIFF_CONVERTER_BACKOFF", "2h", "BACKOFF"},
		{"zero backoff", "SKIFF_CONVERTER_BACKOFF", "0s", "BACKOFF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(tt.key, tt.value)
			_, err := Load()
			if err == nil || !strings.Contains(strings.ToUpper(err.Error()), tt.want) {
				t.Fatalf("Load with %s=%q: error %v, want one naming %s", tt.key, tt.value, err, tt.want)
			}
		})
	}
}

func TestHelpListsEveryVariable(t *testing.T) {
	var b strings.Builder
	if err := Help(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SKIFF_NATS_URL", "nats://127.0.0.1:4222", "SKIFF_CONVERTER_CONCURRENCY", "SKIFF_STORE", "SKIFF_CONVERTER_REGISTRY", "conversions run at once"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, b.String())
		}
	}
}
