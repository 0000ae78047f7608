package piece

import (
	"net/http/httptest"
	"testing"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// FuzzParseRequest feeds the piece server's request parser arbitrary
// query strings: it must never panic, and whatever it accepts is a range
// every later check can take as sound.
func FuzzParseRequest(f *testing.F) {
	hex := bootstrap.Sum([]byte("a")).Hex()
	for _, q := range []string{
		"offset=0&size=1",
		"offset=10&size=20&wait=5000",
		"offset=9223372036854775807&size=2",
		"offset=-1&size=1",
		"offset=0&size=67108865",
		"offset=0&size=1&wait=30001",
		"offset=0&size=1&wait=-5",
		"offset=1e3&size=0x10",
	} {
		f.Add(hex, q)
	}
	f.Fuzz(func(t *testing.T, blob, query string) {
		r := httptest.NewRequest("GET", "/", nil)
		r.URL.Path = Path + blob
		r.URL.RawQuery = query
		_, off, size, wait, err := parseRequest(r)
		if err != nil {
			return
		}
		if off < 0 || size <= 0 || size > MaxSize || off+size < off {
			t.Fatalf("accepted the range [%d,+%d) of %q", off, size, query)
		}
		if wait < 0 || wait > MaxWait {
			t.Fatalf("accepted a wait of %s from %q", wait, query)
		}
	})
}
