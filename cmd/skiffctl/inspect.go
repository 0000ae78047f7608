package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// inspectReport is the --json form of `skiffctl inspect`.
type inspectReport struct {
	Image        string        `json:"image"`
	Bootstrap    string        `json:"bootstrap"`
	ChunkSize    uint32        `json:"chunkSize"`
	Files        int           `json:"files"`
	Inodes       int           `json:"inodes"`
	Chunks       int           `json:"chunks"`
	ZeroChunks   int           `json:"zeroChunks"`
	ChunkRefs    int           `json:"chunkRefs"`
	Frames       int           `json:"frames"`
	Blobs        []string      `json:"blobs"`
	LogicalBytes int64         `json:"logicalBytes"`
	UniqueBytes  int64         `json:"uniqueBytes"`
	StoredBytes  int64         `json:"storedBytes"`
	DedupRatio   float64       `json:"dedupRatio"`
	Entries      []inspectFile `json:"entries,omitempty"`
}

type inspectFile struct {
	Path   string `json:"path"`
	Mode   string `json:"mode"`
	Size   int64  `json:"size"`
	Chunks int    `json:"chunks,omitempty"`
	Target string `json:"target,omitempty"`
}

func runInspect(ctx context.Context, env settings, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("inspect", "IMAGE", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	files := fs.Bool("files", false, "also list every file with its size and chunk count")
	platform := fs.String("platform", "", "of a Skiff index, the platform to inspect (os/arch[/variant]; default: this machine's)")
	if err := parseArgs(fs, args, 1); err != nil {
		return err
	}
	ref := fs.Arg(0)
	b, d, err := platformBootstrap(ctx, ref, *platform)
	if err != nil {
		return err
	}
	s := b.Stats()
	r := inspectReport{
		Image: ref, Bootstrap: d.String(), ChunkSize: b.ChunkSize, Files: s.Files, Inodes: s.Inodes,
		Chunks: s.Chunks, ZeroChunks: s.ZeroChunks, ChunkRefs: s.ChunkRefs, Frames: s.Frames,
		LogicalBytes: s.LogicalBytes, UniqueBytes: s.UniqueBytes, StoredBytes: s.StoredBytes, DedupRatio: s.DedupRatio(),
	}
	for _, bl := range b.Blobs {
		r.Blobs = append(r.Blobs, bl.String())
	}
	if *files {
		b.Walk(func(p string, ino uint32) error {
			in := &b.Inodes[ino]
			r.Entries = append(r.Entries, inspectFile{Path: p, Mode: modeString(in.Mode), Size: in.Size, Chunks: int(in.ChunkCount), Target: in.Target})
			return nil
		})
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	fmt.Fprintf(stdout, "image:       %s\nbootstrap:   %s\n", r.Image, r.Bootstrap)
	fmt.Fprintf(stdout, "files:       %d (%d inodes)\n", r.Files, r.Inodes)
	fmt.Fprintf(stdout, "chunks:      %d distinct (%d all-zero), %d references, %d frames in %d blobs, chunk size %s\n",
		r.Chunks, r.ZeroChunks, r.ChunkRefs, r.Frames, len(r.Blobs), bytesString(int64(r.ChunkSize)))
	fmt.Fprintf(stdout, "logical:     %s\nunique:      %s\nstored:      %s\ndedup ratio: %.2f (logical/stored)\n",
		bytesString(r.LogicalBytes), bytesString(r.UniqueBytes), bytesString(r.StoredBytes), r.DedupRatio)
	for _, f := range r.Entries {
		line := fmt.Sprintf("%s %12d %4d %s", f.Mode, f.Size, f.Chunks, f.Path)
		if f.Target != "" {
			line += " -> " + f.Target
		}
		fmt.Fprintln(stdout, line)
	}
	return nil
}

// modeString renders st_mode like ls -l.
func modeString(mode uint32) string {
	types := map[uint32]byte{
		bootstrap.ModeDir: 'd', bootstrap.ModeSymlink: 'l', bootstrap.ModeChar: 'c',
		bootstrap.ModeBlock: 'b', bootstrap.ModeFIFO: 'p', bootstrap.ModeSocket: 's',
	}
	out := []byte("-rwxrwxrwx")
	if t, ok := types[mode&bootstrap.ModeType]; ok {
		out[0] = t
	}
	for i := 0; i < 9; i++ {
		if mode&(1<<(8-i)) == 0 {
			out[i+1] = '-'
		}
	}
	special := []struct {
		bit  uint32
		pos  int
		x, n byte
	}{{0o4000, 3, 's', 'S'}, {0o2000, 6, 's', 'S'}, {0o1000, 9, 't', 'T'}}
	for _, s := range special {
		if mode&s.bit != 0 {
			if out[s.pos] == 'x' {
				out[s.pos] = s.x
			} else {
				out[s.pos] = s.n
			}
		}
	}
	return string(out)
}
