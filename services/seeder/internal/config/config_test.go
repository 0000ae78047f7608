package config

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestLoadDefaults(t *testing.T) {
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if c.Concurrency != 2 || c.Interval != 10*time.Second || c.Listen != ":8092" || c.ID != host || c.Advertise != host+":8092" {
		t.Errorf("defaults: %+v", c)
	}
}

func TestLoadRejects(t *testing.T) {
	tests := []struct {
		name, key, value, want string
	}{
		{"zero concurrency", "SKIFF_SEEDER_PREHEAT_CONCURRENCY", "0", "CONCURRENCY"},
		{"not a number", "SKIFF_SEEDER_CACHE_SIZE", "big", "CACHESIZE"},
		{"negative cache", "SKIFF_SEEDER_CACHE_SIZE", "-1", "CACHE_SIZE"},
		{"negative upload rate", "SKIFF_SEEDER_UPLOAD_RATE", "-1", "UPLOAD_RATE"},
		{"fast announce", "SKIFF_SEEDER_ANNOUNCE_INTERVAL", "1ms", "ANNOUNCE_INTERVAL"},
		{"short ack wait", "SKIFF_SEEDER_ACK_WAIT", "1ms", "ACK_WAIT"},
		{"bad advertise", "SKIFF_SEEDER_ADVERTISE", "nohostport", "ADVERTISE"},
		{"bad listen", "SKIFF_SEEDER_LISTEN", "nohostport", "LISTEN"},
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

func TestAdvertiseFollowsListen(t *testing.T) {
	t.Setenv("SKIFF_SEEDER_LISTEN", "10.1.2.3:9000")
	t.Setenv("SKIFF_SEEDER_ID", "s1")
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if c.Advertise != "10.1.2.3:9000" || c.ID != "s1" {
		t.Errorf("advertise %q id %q", c.Advertise, c.ID)
	}
}
