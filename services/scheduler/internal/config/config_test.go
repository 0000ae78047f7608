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
	if c.TTL != 30*time.Second || c.Quarantine != 5*time.Minute || c.MaxParents != 4 || c.MaxChildren != 4 || c.InFlight != 10*time.Second || c.Listen != "127.0.0.1:8093" {
		t.Errorf("defaults: %+v", c)
	}
}

func TestLoadRejects(t *testing.T) {
	tests := []struct {
		name, key, value, want string
	}{
		{"short ttl", "SKIFF_SCHEDULER_PEER_TTL", "10ms", "PEER_TTL"},
		{"not a duration", "SKIFF_SCHEDULER_PEER_TTL", "soon", "TTL"},
		{"negative quarantine", "SKIFF_SCHEDULER_QUARANTINE", "-1s", "QUARANTINE"},
		{"no parents", "SKIFF_SCHEDULER_MAX_PARENTS", "0", "MAX_PARENTS"},
		{"no children", "SKIFF_SCHEDULER_MAX_CHILDREN", "0", "MAX_CHILDREN"},
		{"short flight", "SKIFF_SCHEDULER_IN_FLIGHT", "100ms", "IN_FLIGHT"},
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
