// Command skiffctl converts, inspects, verifies and mounts Skiff images.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/caarlos0/env/v11"

	"github.com/skiff-dev/skiff/pkg/envdoc"
	"github.com/skiff-dev/skiff/pkg/telemetry"
)

// command is one skiffctl subcommand. run receives the arguments after the
// subcommand name and owns their parsing.
type command struct {
	summary string
	run     func(ctx context.Context, env settings, args []string, stdout, stderr io.Writer) error
}

// settings are skiffctl's environment, read once: the defaults of the
// flags that name where things are, so that a shell set up for one
// cluster need not repeat them.
type settings struct {
	Store               string `env:"SKIFF_STORE" help:"default --store (default: a directory in the user's cache); S3 credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"`
	NATS                string `env:"SKIFF_NATS_URL" envDefault:"nats://127.0.0.1:4222" help:"default --nats: the NATS server of the services"`
	ContainerdAddress   string `env:"CONTAINERD_ADDRESS" envDefault:"/run/containerd/containerd.sock" help:"default --address of pull"`
	ContainerdNamespace string `env:"CONTAINERD_NAMESPACE" envDefault:"default" help:"default --namespace of pull"`
	Debug               bool   `env:"SKIFF_DEBUG" help:"log at debug level"`
}

var commands = map[string]command{
	"convert": {"convert an OCI image into a Skiff image", runConvert},
	"inspect": {"show the files, chunks and dedup ratio of a Skiff image", runInspect},
	"check":   {"verify every chunk of a Skiff image", runCheck},
	"mount":   {"mount a Skiff image lazily with FUSE (foreground)", runMount},
	"pull":    {"pull an image into containerd for the skiff snapshotter", runPull},
	"preheat": {"have a P2P seeder copy a Skiff image's chunk data from the store", runPreheat},
	"status":  {"list conversions of the converter service: pending, running, done, failed", runStatus},
	"gc":      {"delete store data of Skiff images the named registries no longer hold", runGC},
}

// errUsage makes main exit with status 2 after the flag package printed usage.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "skiffctl: unknown command %q\n", args[0])
		usage(stderr)
		return 2
	}
	s, err := env.ParseAs[settings]()
	if err != nil {
		fmt.Fprintf(stderr, "skiffctl: %v\n", err)
		return 2
	}
	if s.Store == "" {
		s.Store = defaultStoreURL()
	}
	level := slog.LevelInfo
	if s.Debug {
		level = slog.LevelDebug
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})))
	// With OTEL_EXPORTER_OTLP_ENDPOINT set, a command's requests join
	// the traces of the services they reach.
	shutdown, err := telemetry.Setup(ctx, "skiffctl", "")
	if err != nil {
		fmt.Fprintf(stderr, "skiffctl: %v\n", err)
		return 1
	}
	defer shutdown(context.WithoutCancel(ctx))
	if err := cmd.run(ctx, s, args[1:], stdout, stderr); err != nil {
		if errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp) {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		fmt.Fprintf(stderr, "skiffctl %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: skiffctl COMMAND [flags] ARGS\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'skiffctl COMMAND --help' for a command's flags.\n\nEnvironment:")
	if err := envdoc.Write[settings](w, env.Options{}); err != nil {
		fmt.Fprintln(w, err)
	}
}

// newFlags returns a FlagSet whose usage line names the command and its
// positional arguments.
func newFlags(name, positional string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("skiffctl "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: skiffctl %s [flags] %s\n", name, positional)
		fs.PrintDefaults()
	}
	return fs
}

// parseArgs parses flags and checks the number of positional arguments.
func parseArgs(fs *flag.FlagSet, args []string, want int) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != want {
		fs.Usage()
		return errUsage
	}
	return nil
}
