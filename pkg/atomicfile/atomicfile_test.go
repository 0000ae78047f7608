package atomicfile

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		old  []byte // nil: no file before
		data []byte
		perm os.FileMode
	}{
		{"new file", nil, []byte("1234\n"), 0o600},
		{"replaces", []byte("a longer old content"), []byte("short"), 0o644},
		{"empty", []byte("x"), nil, 0o600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, tt.name)
			if tt.old != nil {
				if err := os.WriteFile(p, tt.old, 0o666); err != nil {
					t.Fatal(err)
				}
			}
			if err := WriteFile(p, tt.data, tt.perm); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(p)
			if err != nil || !bytes.Equal(got, tt.data) {
				t.Fatalf("read back %q, %v; want %q", got, err, tt.data)
			}
			if st, err := os.Stat(p); err != nil || st.Mode().Perm() != tt.perm {
				t.Fatalf("mode %v, %v; want %v", st.Mode().Perm(), err, tt.perm)
			}
		})
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(tests) {
		t.Errorf("%d files left in the directory, want %d: temporary files stayed", len(entries), len(tests))
	}
}

// TestWriteFileNeverPartial: a reader racing the writes sees one whole
// content or the other, never an empty or a cut one.
func TestWriteFileNeverPartial(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pid")
	contents := [][]byte{bytes.Repeat([]byte("a"), 5000), bytes.Repeat([]byte("b"), 7000)}
	if err := WriteFile(p, contents[0], 0o600); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		defer close(done)
		for i := range 500 {
			if err := WriteFile(p, contents[i%2], 0o600); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for reads := 0; ; reads++ {
		select {
		case <-done:
			wg.Wait()
			return
		default:
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, contents[0]) && !bytes.Equal(got, contents[1]) {
			t.Fatalf("read %d bytes of neither content", len(got))
		}
	}
}

func TestWriteFileFails(t *testing.T) {
	if err := WriteFile(filepath.Join(t.TempDir(), "missing", "f"), []byte("x"), 0o600); err == nil {
		t.Fatal("writing into a missing directory succeeded")
	}
}
