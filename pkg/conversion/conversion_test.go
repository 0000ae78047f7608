package conversion

import (
	"reflect"
	"testing"
	"time"
)

func TestKey(t *testing.T) {
	tests := []struct {
		digest, want string
		wantErr      bool
	}{
		{"sha256:abc123", "sha256.abc123", false},
		{"sha512:ff", "sha512.ff", false},
		{"abc123", "", true},
		{"sha256:", "", true},
		{":abc", "", true},
		{"sha256:ab.c", "", true},
		{"sha256:a/b", "", true},
		{"sha256:a*", "", true},
	}
	for _, tt := range tests {
		got, err := Key(tt.digest)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("Key(%q) = %q, %v; want %q, error %v", tt.digest, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestRecordRoundTrip(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	r := &Record{Source: "r/a:1", SourceDigest: "sha256:aa", Target: "r/a:1-skiff", State: Done, Seq: 7, Attempts: 2,
		TargetDigest: "sha256:bb", BootstrapDigest: "sha256:cc", BootstrapDigests: []string{"sha256:cc", "sha256:dd"},
		NewBytes: 10, Duration: time.Second, Created: now, Updated: now}
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Errorf("round trip: got %+v, want %+v", got, r)
	}
}

func TestRecordBootstraps(t *testing.T) {
	for _, tt := range []struct {
		r    Record
		want []string
	}{
		{Record{}, nil},
		{Record{BootstrapDigest: "sha256:cc"}, []string{"sha256:cc"}},
		{Record{BootstrapDigest: "sha256:cc", BootstrapDigests: []string{"sha256:cc", "sha256:dd"}}, []string{"sha256:cc", "sha256:dd"}},
	} {
		if got := tt.r.Bootstraps(); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%+v: Bootstraps() = %q, want %q", tt.r, got, tt.want)
		}
	}
}

func TestUnmarshalRejects(t *testing.T) {
	for _, in := range []string{``, `{`, `[]`, `{"state":"done"}`, `{"sourceDigest":"sha256:aa"}`} {
		if _, err := Unmarshal([]byte(in)); err == nil {
			t.Errorf("Unmarshal(%q) succeeded", in)
		}
	}
}

func TestFinal(t *testing.T) {
	for s, want := range map[State]bool{Pending: false, Running: false, Done: true, Failed: true} {
		if s.Final() != want {
			t.Errorf("%s.Final() = %v", s, !want)
		}
	}
}
