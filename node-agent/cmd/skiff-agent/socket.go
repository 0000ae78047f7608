package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
)

// listenUnix listens on a unix socket at path, replacing whatever is
// there in one step: the socket is made beside path and renamed over it,
// so a client of a process being replaced (containerd, the agent) never
// finds no socket. remove deletes the socket if it is still this one's: a
// successor that replaced it keeps its own when this process exits.
func listenUnix(path string) (l *net.UnixListener, remove func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, nil, fmt.Errorf("socket directory: %w", err)
	}
	next := path + ".next"
	if err := os.Remove(next); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("remove stale socket: %w", err)
	}
	l, err = net.ListenUnix("unix", &net.UnixAddr{Name: next, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("listen: %w", err)
	}
	l.SetUnlinkOnClose(false)
	var st syscall.Stat_t
	if err := syscall.Stat(next, &st); err != nil {
		l.Close()
		return nil, nil, fmt.Errorf("listen: %w", err)
	}
	if err := os.Rename(next, path); err != nil {
		l.Close()
		os.Remove(next)
		return nil, nil, fmt.Errorf("listen: %w", err)
	}
	remove = func() {
		var now syscall.Stat_t
		if syscall.Stat(path, &now) == nil && now.Ino == st.Ino && now.Dev == st.Dev {
			os.Remove(path)
		}
	}
	return l, remove, nil
}

// keepSocket keeps the socket at path reachable under another name, so
// that it can be put back: a mount process taking over replaces the old
// one's socket before the old one has agreed, and if it does not, the
// old one goes on serving and must still be found there. restore puts it
// back; drop forgets it.
func keepSocket(path string) (restore func() error, drop func(), err error) {
	prev := path + ".prev"
	if err := os.Remove(prev); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("keep socket: %w", err)
	}
	if err := os.Link(path, prev); err != nil {
		return nil, nil, fmt.Errorf("keep socket: %w", err)
	}
	restore = func() error {
		if err := os.Rename(prev, path); err != nil {
			return fmt.Errorf("restore socket: %w", err)
		}
		return nil
	}
	return restore, func() { os.Remove(prev) }, nil
}
