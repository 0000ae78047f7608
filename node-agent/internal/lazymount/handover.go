package lazymount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/lazyfs"
)

// A mount process is replaced (upgraded) without unmounting anything: the
// new process asks the old one for its mounts, the old one passes each
// FUSE connection over (see lazyfs.Resume) and exits, and the new one
// serves the connections from there, having the kernel send again what
// the old one read and never answered. Containers only see a pause.

// HandedMount is one mount passed from a mount process to its successor.
type HandedMount struct {
	Bootstrap  bootstrap.Digest `json:"bootstrap"`
	Mountpoint string           `json:"mountpoint"`
	// Settings are what the kernel negotiated with the FUSE server.
	Settings []byte `json:"settings"`
	// Dev is the FUSE device; it travels beside the JSON.
	Dev *os.File `json:"-"`
}

// errHandingOver fails mount requests while the process hands its mounts
// to a successor, which will take them in a moment.
var errHandingOver = errors.New("the mount process is being replaced; retry")

// Handover stops m taking mount and unmount requests and returns every
// mount for a successor. m keeps serving them meanwhile. EndHandover
// settles it.
func (m *Manager) Handover() ([]HandedMount, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.handingOver {
		return nil, errHandingOver
	}
	hs := make([]HandedMount, 0, len(m.mounts))
	for d, mt := range m.mounts {
		dev, settings, err := mt.srv.Handover()
		if err != nil {
			return nil, err
		}
		hs = append(hs, HandedMount{Bootstrap: d, Mountpoint: mt.srv.Mountpoint(), Settings: settings, Dev: dev})
	}
	m.handingOver = true
	return hs, nil
}

// Devices returns every mount with a duplicate of its FUSE device, which
// the caller closes: duplicated under m's lock, it cannot be some other
// file by the time it is used, whatever happens to the mount meanwhile.
func (m *Manager) Devices() []HandedMount {
	m.mu.Lock()
	defer m.mu.Unlock()
	hs := make([]HandedMount, 0, len(m.mounts))
	for d, mt := range m.mounts {
		dev, settings, err := mt.srv.Handover()
		if err != nil {
			continue
		}
		fd, err := unix.FcntlInt(dev.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			continue
		}
		hs = append(hs, HandedMount{Bootstrap: d, Mountpoint: mt.srv.Mountpoint(), Settings: settings, Dev: os.NewFile(uintptr(fd), dev.Name())})
	}
	return hs
}

// Generation changes whenever the set of mounts does.
func (m *Manager) Generation() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.gen
}

// EndHandover settles a Handover. When the successor took the mounts
// (done), m forgets them, so that Close leaves them mounted, and keeps
// refusing requests until the process exits; otherwise m goes on as if
// nothing happened.
func (m *Manager) EndHandover(done bool) {
	m.mu.Lock()
	if !done {
		m.handingOver = false
		m.mu.Unlock()
		return
	}
	mounts := m.mounts
	m.mounts = map[bootstrap.Digest]*mounted{}
	m.gen++
	m.mu.Unlock()
	// What was recorded so far still counts. The successor waits for
	// this process to exit, and kills it after a grace period, so the
	// store gets a bounded time: an outage costs the startup sets, not
	// the upgrade.
	ctx, cancel := context.WithTimeout(context.Background(), saveTimeout)
	defer cancel()
	for d, mt := range mounts {
		m.saveStartupSet(ctx, d, mt.rec, mt.layout)
	}
}

// saveTimeout bounds saving startup sets when the process hands its
// mounts over or stops: well within the grace a successor gives
// (skiff-agent's handoverGrace), and within the kubelet's grace before
// SIGKILL, which would leave the mounts half unmounted.
const saveTimeout = 5 * time.Second

// Resume serves a mount handed over by the previous mount process. The
// mount's files were being recorded, if ever, by that process.
func (m *Manager) Resume(ctx context.Context, h HandedMount) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if want := m.Mountpoint(h.Bootstrap); h.Mountpoint != want {
		return fmt.Errorf("resume %s: mounted at %s, not at %s", h.Bootstrap, h.Mountpoint, want)
	}
	if _, ok := m.mounts[h.Bootstrap]; ok {
		return fmt.Errorf("resume %s: already mounted", h.Bootstrap)
	}
	b, err := m.load(ctx, h.Bootstrap)
	if err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	rec := newRecorder(b, m.fetch, 0)
	// A mount that used passthrough goes on with it, whatever this
	// process was told: its files may be open that way.
	_, err = os.Stat(m.openState(h.Bootstrap))
	passthrough := m.opts.Passthrough || err == nil
	opts := lazyfs.Options{Logger: m.log, Passthrough: passthrough, OpenState: m.openState(h.Bootstrap)}
	// An image-mode mount is served from the layout it was mounted with.
	layout, err := m.loadLayout(h.Bootstrap)
	if err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	if layout != nil {
		opts.Image, opts.ImageDir = layout, m.imageDir(h.Bootstrap)
	}
	srv, err := lazyfs.Resume(ctx, h.Mountpoint, h.Dev, h.Settings, b, rec, opts)
	if err != nil {
		return err
	}
	m.mounts[h.Bootstrap] = &mounted{srv: srv, rec: rec, layout: layout}
	m.resumed = append(m.resumed, srv)
	m.gen++
	m.leaseMounted(h.Bootstrap)
	m.log.Info("lazymount: took over image", "bootstrap", h.Bootstrap, "mountpoint", h.Mountpoint)
	return nil
}

// DropResumed forgets the mounts taken over by Resume and not yet served,
// without unmounting them: the old process keeps them when a takeover is
// abandoned.
func (m *Manager) DropResumed() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for d, mt := range m.mounts {
		for _, srv := range m.resumed {
			if mt.srv == srv {
				delete(m.mounts, d)
			}
		}
	}
	m.resumed = nil
}

// StartResumed serves the mounts taken over by Resume, once the previous
// mount process has exited (see lazyfs.Server.Start).
func (m *Manager) StartResumed() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, srv := range m.resumed {
		errs = append(errs, srv.Start())
	}
	m.resumed = nil
	return errors.Join(errs...)
}
