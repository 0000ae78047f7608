package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/conversion"
)

func runStatus(ctx context.Context, env settings, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", "[IMAGE]", stderr)
	natsURL := fs.String("nats", env.NATS, "NATS server of the converter service")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		fs.Usage()
		return errUsage
	}
	b, closeBus, err := dialBus(*natsURL)
	if err != nil {
		return err
	}
	defer closeBus()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	recs, err := b.ListRecords(ctx)
	if err != nil {
		return err
	}
	if img := fs.Arg(0); img != "" {
		recs = filterRecords(recs, img)
		if len(recs) == 0 {
			return fmt.Errorf("no conversion of %s", img)
		}
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Created.Before(recs[j].Created) })
	writeRecords(stdout, recs, time.Now())
	return nil
}

// filterRecords keeps the records an IMAGE argument names: a reference
// with a tag (source or Skiff target), a repository, or a digest.
func filterRecords(recs []*conversion.Record, img string) []*conversion.Record {
	var out []*conversion.Record
	for _, r := range recs {
		switch img {
		case r.Source, r.Target, r.SourceDigest, r.TargetDigest:
			out = append(out, r)
			continue
		}
		if repo, _, ok := cutTag(r.Source); ok && repo == img {
			out = append(out, r)
		}
	}
	return out
}

// cutTag splits "host:port/repo:tag" at the tag's colon.
func cutTag(ref string) (repo, tag string, ok bool) {
	i := strings.LastIndexByte(ref, ':')
	if i < 0 || strings.Contains(ref[i:], "/") {
		return ref, "", false
	}
	return ref[:i], ref[i+1:], true
}

func writeRecords(w io.Writer, recs []*conversion.Record, now time.Time) {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "STATE\tSOURCE\tDIGEST\tATTEMPTS\tUPDATED\tDETAIL")
	for _, r := range recs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s ago\t%s\n", r.State, r.Source, shortDigest(r.SourceDigest), r.Attempts,
			now.Sub(r.Updated).Round(time.Second), recordDetail(r))
	}
	tw.Flush()
}

func recordDetail(r *conversion.Record) string {
	switch r.State {
	case conversion.Done:
		return fmt.Sprintf("%s@%s, new in store %s, in %s", r.Target, shortDigest(r.TargetDigest), bytesString(r.NewBytes), r.Duration.Round(time.Millisecond))
	case conversion.Running:
		return "on " + r.Worker
	default:
		return r.Reason
	}
}

func shortDigest(d string) string {
	if alg, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return alg + ":" + hex[:12]
	}
	return d
}

// dialBus connects to NATS without retrying: a CLI should say at once that
// the server is not there.
func dialBus(url string) (*bus.Bus, func(), error) {
	nc, err := bus.Connect(url, "skiffctl")
	if err != nil {
		return nil, nil, err
	}
	b, err := bus.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return b, nc.Close, nil
}
