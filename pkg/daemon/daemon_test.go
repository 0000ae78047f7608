package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

type testConfig struct {
	Addr  string `env:"SKIFF_TEST_ADDR" envDefault:":1234" help:"where to listen"`
	Debug bool   `env:"SKIFF_TEST_DEBUG" help:"log debug messages"`
}

func TestMain_(t *testing.T) {
	errLoad := errors.New("SKIFF_TEST_ADDR: bad address")
	errRun := errors.New("store unreachable")
	for _, tt := range []struct {
		name      string
		args      []string
		load, run error
		// runFn, if set, runs instead of returning run.
		runFn  func(context.Context) error
		code   int
		ran    bool
		stdout []string
		stderr []string
		quiet  []string // not in stderr
	}{
		{name: "help", args: []string{"--help"}, code: 0, stdout: []string{"usage: skiff-test", "Tests things.", "SKIFF_TEST_ADDR", ":1234", "where to listen", "SKIFF_TEST_DEBUG"}},
		{name: "short help", args: []string{"-h"}, code: 0, stdout: []string{"SKIFF_TEST_ADDR"}},
		{name: "argument", args: []string{"serve"}, code: 2, stderr: []string{"skiff-test takes no arguments", "SKIFF_TEST_ADDR"}},
		{name: "bad config", load: errLoad, code: 2, stderr: []string{"skiff-test: SKIFF_TEST_ADDR: bad address"}},
		{name: "clean stop", code: 0, ran: true},
		{name: "failure", run: errRun, code: 1, ran: true, stderr: []string{"skiff-test stopped", "store unreachable"}},
		{name: "stopped while starting", code: 0, ran: true, quiet: []string{"level=ERROR"}, runFn: func(ctx context.Context) error {
			// Main's signal handler is installed while Run runs, so
			// this reaches it, not the test binary's default action.
			if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
				return err
			}
			return Retry(ctx, "set up jetstream", func() error { return errors.New("nats down") })
		}},
		{name: "canceled without a signal", code: 1, ran: true, stderr: []string{"level=ERROR"}, runFn: func(context.Context) error {
			return fmt.Errorf("watch: %w", context.Canceled)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			ran := false
			code := Main(tt.args, &stdout, &stderr, Service[testConfig]{
				Name:    "skiff-test",
				Summary: "Tests things.",
				Load:    func() (testConfig, error) { return testConfig{Addr: ":1"}, tt.load },
				Debug:   func(c testConfig) bool { return c.Debug },
				Run: func(ctx context.Context, c testConfig) error {
					ran = true
					if c.Addr != ":1" || ctx.Err() != nil {
						t.Errorf("run got config %+v, ctx err %v", c, ctx.Err())
					}
					if tt.runFn != nil {
						return tt.runFn(ctx)
					}
					return tt.run
				},
			})
			if code != tt.code || ran != tt.ran {
				t.Errorf("exit %d, ran %v; want %d, %v\nstdout:\n%s\nstderr:\n%s", code, ran, tt.code, tt.ran, &stdout, &stderr)
			}
			for _, want := range tt.stdout {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("stdout lacks %q:\n%s", want, &stdout)
				}
			}
			for _, want := range tt.stderr {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr lacks %q:\n%s", want, &stderr)
				}
			}
			for _, unwanted := range tt.quiet {
				if strings.Contains(stderr.String(), unwanted) {
					t.Errorf("stderr has %q:\n%s", unwanted, &stderr)
				}
			}
		})
	}
}

func TestServeStopsWithContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, srv, ln) }()
	resp, err := http.Get("http://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "ok" {
		t.Fatalf("served %q", body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("clean stop returned %v", err)
	}
	if _, err := http.Get("http://" + ln.Addr().String()); err == nil {
		t.Fatal("still serving after stop")
	}
}

func TestServeReportsDeadListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if err := Serve(context.Background(), &http.Server{}, ln); err == nil {
		t.Fatal("serving on a closed listener succeeded")
	}
}

func TestRetry(t *testing.T) {
	calls := 0
	err := Retry(context.Background(), "flaky", func() error {
		if calls++; calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("Retry: %v after %d calls, want success after 3", err, calls)
	}
	errDown := errors.New("nats down")
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	err = Retry(ctx, "set up jetstream", func() error { return errDown })
	// A stop, told apart from a failure, which still says what failed.
	if !errors.Is(err, context.Canceled) || !errors.Is(err, errDown) ||
		!strings.Contains(err.Error(), "set up jetstream") || !strings.Contains(err.Error(), "nats down") {
		t.Fatalf("Retry after ctx end: %v", err)
	}
}
