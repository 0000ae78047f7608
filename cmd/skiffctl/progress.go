package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/dustin/go-humanize"
	"golang.org/x/term"
)

// progressLine redraws one status line on a terminal at most ten times a
// second, and prints nothing when stderr is not a terminal, so scripts and
// CI logs stay clean.
type progressLine struct {
	mu    sync.Mutex
	w     io.Writer
	tty   bool
	last  time.Time
	shown bool
}

func newProgressLine(stderr io.Writer) *progressLine {
	f, ok := stderr.(*os.File)
	return &progressLine{w: stderr, tty: ok && term.IsTerminal(int(f.Fd()))}
}

// update redraws the line unless one was drawn less than 100ms ago.
func (p *progressLine) update(format string, args ...any) {
	if !p.tty {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if now := time.Now(); now.Sub(p.last) >= 100*time.Millisecond {
		p.last = now
		p.shown = true
		fmt.Fprintf(p.w, "\r\033[K"+format, args...)
	}
}

// done clears the line.
func (p *progressLine) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		fmt.Fprint(p.w, "\r\033[K")
		p.shown = false
	}
}

// bytesString formats n in binary units.
func bytesString(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }
