package config

import (
	"strings"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
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
		{"tiny chunks", "SKIFF_CHUNK_SIZE", "4095", "CHUNK_SIZE"},
		{"huge chunks", "SKIFF_CHUNK_SIZE", "16777217", "CHUNK_SIZE"},
		{"negative chunks", "SKIFF_CHUNK_SIZE", "-1", "CHUNK_SIZE"},
		{"unknown compression", "SKIFF_COMPRESSION", "brotli", "COMPRESSION"},
		{"registry with a scheme", "SKIFF_CONVERTER_REGISTRY", "http://r.example:5000", "REGISTRY"},
		{"registry with a path", "SKIFF_CONVERTER_REGISTRY", "r.example:5000/mirror", "REGISTRY"},
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

func TestLoadAccepts(t *testing.T) {
	tests := []struct {
		name, key, value string
	}{
		{"smallest chunks", "SKIFF_CHUNK_SIZE", "4096"},
		{"largest chunks", "SKIFF_CHUNK_SIZE", "16777216"},
		{"lz4", "SKIFF_COMPRESSION", "lz4"},
		{"no compression", "SKIFF_COMPRESSION", "none"},
		{"registry host", "SKIFF_CONVERTER_REGISTRY", "registry.internal"},
		{"registry host and port", "SKIFF_CONVERTER_REGISTRY", "127.0.0.1:5000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(tt.key, tt.value)
			if _, err := Load(); err != nil {
				t.Fatalf("Load with %s=%q: %v", tt.key, tt.value, err)
			}
		})
	}
}

func TestConvertOptions(t *testing.T) {
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	c.ChunkSize, c.Compression, c.WorkDir = 65536, "lz4", "/work"
	o, err := c.ConvertOptions()
	if err != nil {
		t.Fatal(err)
	}
	if o.ChunkSize != 65536 || o.Compression != bootstrap.LZ4 || o.WorkDir != "/work" {
		t.Errorf("convert options %+v", o)
	}
}
