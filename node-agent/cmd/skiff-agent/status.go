package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/skiff-dev/skiff/node-agent/internal/lazymount"
	"github.com/skiff-dev/skiff/pkg/fetch"
)

// statusTimeout bounds `skiff-agent status`.
const statusTimeout = 10 * time.Second

// statusReport is what `skiff-agent status --json` prints.
type statusReport struct {
	Socket  string                `json:"socket"`
	Version string                `json:"version"`
	PID     int                   `json:"pid"`
	Mounts  []lazymount.MountInfo `json:"mounts"`
	Stats   fetch.Stats           `json:"stats"`
}

// printStatus prints what the mount process serves and what its reads cost:
// the node's view of Skiff for an operator (kubectl exec ... skiff-agent
// status), as the metrics are for a scraper.
func printStatus(cfg config, args []string, stdout, stderr io.Writer) int {
	asJSON := false
	for _, a := range args {
		switch a {
		case "--json":
			asJSON = true
		default:
			fmt.Fprintf(stderr, "skiff-agent status: unknown argument %q (usage: skiff-agent status [--json])\n", a)
			return 2
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	sock := mountdSocket(cfg)
	c := lazymount.NewClient(sock)
	st, err := c.Status(ctx)
	if err == nil && st.Instance == "" {
		err = fmt.Errorf("the mount process is too old to report its status")
	}
	r := statusReport{Socket: sock, Version: st.Version, PID: st.PID}
	if err == nil {
		r.Mounts, err = c.Mounts(ctx)
	}
	if err == nil {
		r.Stats, err = c.Stats(ctx)
	}
	if err != nil {
		fmt.Fprintf(stderr, "skiff-agent status: mount process on %s: %v\n", sock, err)
		return 1
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			fmt.Fprintf(stderr, "skiff-agent status: %v\n", err)
			return 1
		}
		return 0
	}
	writeStatus(stdout, r)
	return 0
}

// writeStatus prints r for people.
func writeStatus(w io.Writer, r statusReport) {
	fmt.Fprintf(w, "mount process %s (pid %d) on %s\n", r.Version, r.PID, r.Socket)
	fmt.Fprintf(w, "\n%d images mounted\n", len(r.Mounts))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, m := range r.Mounts {
		how := "fuse tree"
		if m.EROFS {
			how = "erofs"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", m.Bootstrap, how, m.Mountpoint)
	}
	tw.Flush()
	s := r.Stats
	fmt.Fprintf(w, "\nchunk reads: %d from memory, %d from the cache, %d cache files read by the kernel, %d all-zero, %d fetched (waited %s in all)\n",
		s.MemoryHits, s.CacheHits, s.FileHits, s.ZeroChunks, s.CacheMisses, s.MissWait.Round(time.Millisecond))
	if len(s.Sources) > 0 {
		fmt.Fprintln(w, "\nsources:")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "  source\trequests\terrors\tframes\tchunks\tbytes\t")
		for _, src := range s.Sources {
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%d\t%s\t\n", src.Name, src.Requests, src.Errors, src.Frames, src.Chunks, byteSize(src.Bytes))
		}
		tw.Flush()
	}
	if c := s.Cache; c != nil {
		fmt.Fprintf(w, "\ncache: %s of %s in %d files; %d evicted, %d corrupt files removed; %s in memory waiting to be written\n",
			byteSize(c.Bytes), byteSize(c.MaxBytes), c.Entries, c.Evictions, c.Corrupt, byteSize(s.PendingBytes))
	}
}

// byteSize formats n bytes in binary units.
func byteSize(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }
