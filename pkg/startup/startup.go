// Package startup is an image's startup set: the files its containers
// read first, stored beside its bootstrap (store.StartupKey) so that
// every node mounting the image fetches them ahead. The first node to run
// an image records one; the converter writes one when told which paths
// matter (skiffctl convert --prefetch, as Nydus' prefetch patterns).
//
// A set lists one absolute path per line after a header: in first-read
// order, or in storage order when recorded through EROFS. Paths rather
// than inode numbers keep it readable and checkable by hand, and valid
// for any conversion of the same tree.
package startup

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// Header is a set's first line.
const Header = "# skiff startup set v1"

// MaxSize bounds a set read from the store.
const MaxSize = 64 << 20

// Format writes the set of the regular files inodes of b, in that order.
func Format(b *bootstrap.Bootstrap, inodes []uint32) []byte {
	want := make(map[uint32]int, len(inodes))
	for i, ino := range inodes {
		want[ino] = i
	}
	paths := make([]string, len(inodes))
	_ = b.Walk(func(p string, ino uint32) error {
		if i, ok := want[ino]; ok && paths[i] == "" {
			paths[i] = p
		}
		return nil
	})
	var buf bytes.Buffer
	buf.WriteString(Header + "\n")
	for _, p := range paths {
		if p != "" && !strings.ContainsRune(p, '\n') {
			buf.WriteString(p + "\n")
		}
	}
	return buf.Bytes()
}

// Parse resolves the paths of a set in b. Paths the image does not have
// are skipped: the set is a hint, never a reason to fail. A file named
// twice (under two paths, say) is listed once, where first named: the set
// comes from another node, and a set naming the same file over and over
// must not cost more than one naming each once.
func Parse(data []byte, b *bootstrap.Bootstrap) ([]uint32, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	if !sc.Scan() || sc.Text() != Header {
		return nil, fmt.Errorf("startup set: missing header %q", Header)
	}
	var inodes []uint32
	seen := map[uint32]bool{}
	for sc.Scan() {
		if ino, ok := b.LookupPath(sc.Text()); ok && !seen[ino] {
			seen[ino] = true
			inodes = append(inodes, ino)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("startup set: %w", err)
	}
	return inodes, nil
}

// Paths splits a list of paths a user named for Expand: separated by
// newlines or commas, so that the same list fits a file and an image
// label; blank entries and lines starting with # are skipped.
func Paths(list string) []string {
	var paths []string
	for _, line := range strings.Split(list, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		for _, p := range strings.Split(line, ",") {
			if p = strings.TrimSpace(p); p != "" {
				paths = append(paths, p)
			}
		}
	}
	return paths
}

// Expand resolves paths a user named, in order: a regular file is itself,
// a directory every regular file under it, in the image's directory
// order. Unlike Parse it fails on a path the image does not have, since a
// misspelt path would otherwise quietly prefetch nothing.
func Expand(b *bootstrap.Bootstrap, paths []string) ([]uint32, error) {
	var inodes []uint32
	seen := map[uint32]bool{}
	add := func(ino uint32) {
		if b.Inodes[ino].Type() == bootstrap.ModeRegular && !seen[ino] {
			seen[ino] = true
			inodes = append(inodes, ino)
		}
	}
	for _, p := range paths {
		p = path.Clean("/" + p)
		ino, ok := b.LookupPath(p)
		if !ok {
			return nil, fmt.Errorf("startup set: %s: no such file or directory in the image", p)
		}
		if !b.Inodes[ino].IsDir() {
			add(ino)
			continue
		}
		prefix := strings.TrimSuffix(p, "/") + "/"
		_ = b.Walk(func(q string, ino uint32) error {
			switch {
			case strings.HasPrefix(q, prefix):
				add(ino)
			case b.Inodes[ino].IsDir() && q != "/" && !strings.HasPrefix(prefix, q+"/"):
				return fs.SkipDir // neither under p nor on the way there
			}
			return nil
		})
	}
	return inodes, nil
}
