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
)

// command is one skiffctl subcommand. run receives the arguments after the
// subcommand name and owns their parsing.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = map[string]command{
	"convert": {"convert an OCI image into a Skiff image", runConvert},
	"inspect": {"show the files, chunks and dedup ratio of a Skiff image", runInspect},
	"check":   {"verify every chunk of a Skiff image", runCheck},
	"mount":   {"mount a Skiff image lazily with FUSE (foreground)", runMount},
	"pull":    {"pull an image into containerd for the skiff snapshotter", runPull},
	"status":  {"list conversions of the converter service: pending, running, done, failed", runStatus},
}

// errUsage makes main exit with status 2 after the flag package printed usage.
var errUsage = errors.New("usage")

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel()})))
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
	if err := cmd.run(ctx, args[1:], stdout, stderr); err != nil {
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
	fmt.Fprintln(w, "\nRun 'skiffctl COMMAND --help' for a command's flags.")
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

func logLevel() slog.Level {
	if os.Getenv("SKIFF_DEBUG") != "" {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}
