// Package atomicfile writes files that readers see whole or not at all:
// state another process reads at any moment (a pid file, a mount's
// layout or open files for a successor) must never be seen empty or
// half written. Files are not synced: what they hold lives no longer
// than the mounts it describes, which a power loss ends too, and every
// reader checks what it reads (a bootstrap against its digest, a layout
// by parsing it) and rebuilds it when it fails.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFile writes data to path with permissions perm by writing a
// temporary file beside it and renaming it over path, so that path holds
// either its old content or data. The temporary file is removed when
// anything fails.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		if rerr := os.Remove(f.Name()); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
