package main

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestKeepSocket: a socket replaced by a successor's is reachable at its
// path again once restored, as when a takeover is refused and the old
// mount process goes on serving.
func TestKeepSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mountd.sock")
	old, _, err := listenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	restore, drop, err := keepSocket(path)
	if err != nil {
		t.Fatal(err)
	}
	defer drop()
	next, _, err := listenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	reaches := func(l *net.UnixListener) bool {
		t.Helper()
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		l.SetDeadline(time.Now().Add(200 * time.Millisecond))
		a, err := l.Accept()
		if err != nil {
			return false
		}
		a.Close()
		return true
	}
	if !reaches(next) {
		t.Fatal("the path does not reach the successor's socket")
	}
	next.Close()
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	if !reaches(old) {
		t.Fatal("the restored path does not reach the old socket")
	}
}
