package main

import (
	"runtime/debug"
	"testing"
)

func TestTuneGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	tests := []struct {
		name string
		gogc string
		set  int // GOGC in force before, as the runtime read it from the environment
		want int
	}{
		{name: "unset", set: 100, want: mountdGCPercent},
		{name: "set by the operator", gogc: "200", set: 200, want: 200},
		{name: "off", gogc: "off", set: -1, want: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			debug.SetGCPercent(tt.set)
			got := tuneGC(func(k string) string {
				if k == "GOGC" {
					return tt.gogc
				}
				return ""
			})
			if got != tt.want {
				t.Errorf("tuneGC = %d, want %d", got, tt.want)
			}
			if now := debug.SetGCPercent(tt.set); now != tt.want {
				t.Errorf("GOGC in force %d, want %d", now, tt.want)
			}
		})
	}
}
