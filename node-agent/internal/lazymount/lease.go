package lazymount

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/store"
)

// Leases. A container reads its image's chunks from the store for as long
// as it runs, whatever the registries say meanwhile, so the mount process
// keeps a lease (store.LeaseKey under Options.Node) on every bootstrap it
// has mounted: written when the image is mounted or taken over, written
// again every gc.LeaseRefresh, deleted when it is unmounted. Garbage
// collection counts a bootstrap with a fresh lease as live (see pkg/gc).
//
// A lease never fails or holds up a mount: it is written in the
// background, and a store that refuses it costs a warning. Close, and a
// handover, leave the leases: the mounts live on with a successor (which
// writes them again), and the lease of a process that is gone for good
// lapses after gc.LeaseTTL.

// leaseContent is what a lease holds; only its age counts.
const leaseContent = "skiff lease\n"

// leaseTimeout bounds each write and delete of a lease.
const leaseTimeout = 5 * time.Second

// leaseNode is node as the element of a store key: every character not
// in [A-Za-z0-9._-] is replaced with '_', and "." and ".." (which no key
// may hold) become underscores.
func leaseNode(node string) string {
	s := strings.Map(func(r rune) rune {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9', r == '.', r == '_', r == '-':
			return r
		}
		return '_'
	}, node)
	if s == "." || s == ".." {
		s = strings.Repeat("_", len(s))
	}
	return s
}

// leases serialises the store operations on each bootstrap's lease, so
// that a write finishing late cannot bring back a lease an unmount has
// just deleted.
type leases struct {
	node  string // as a key element; "" when leases are off
	every time.Duration
	once  sync.Once // starts refreshLeases

	mu    sync.Mutex
	locks map[bootstrap.Digest]*leaseLock
}

type leaseLock struct {
	sync.Mutex
	users int
}

func (l *leases) lock(d bootstrap.Digest) func() {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = map[bootstrap.Digest]*leaseLock{}
	}
	k := l.locks[d]
	if k == nil {
		k = &leaseLock{}
		l.locks[d] = k
	}
	k.users++
	l.mu.Unlock()
	k.Lock()
	return func() {
		k.Unlock()
		l.mu.Lock()
		if k.users--; k.users == 0 {
			delete(l.locks, d)
		}
		l.mu.Unlock()
	}
}

func (m *Manager) leaseKey(d bootstrap.Digest) string { return store.LeaseKey(m.leases.node, d.Hex()) }

// leaseMounted writes the lease on d, just mounted or taken over, in the
// background, and keeps every lease fresh from then on. m.mu is held.
func (m *Manager) leaseMounted(d bootstrap.Digest) {
	if m.leases.node == "" {
		return
	}
	m.leases.once.Do(func() {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.refreshLeases(m.ctx)
		}()
	})
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.putLease(m.ctx, d)
	}()
}

// refreshLeases writes the lease of every mounted image again every
// leases.every, until ctx ends (Close).
func (m *Manager) refreshLeases(ctx context.Context) {
	t := time.NewTicker(m.leases.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.mu.Lock()
		ds := make([]bootstrap.Digest, 0, len(m.mounts))
		for d := range m.mounts {
			ds = append(ds, d)
		}
		m.mu.Unlock()
		for _, d := range ds {
			m.putLease(ctx, d)
		}
	}
}

// putLease writes the lease on d if d is still mounted.
func (m *Manager) putLease(ctx context.Context, d bootstrap.Digest) {
	defer m.leases.lock(d)()
	m.mu.Lock()
	_, mounted := m.mounts[d]
	m.mu.Unlock()
	if !mounted || ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, leaseTimeout)
	defer cancel()
	if err := m.store.Put(ctx, m.leaseKey(d), strings.NewReader(leaseContent), int64(len(leaseContent))); err != nil {
		m.log.Warn("lazymount: write lease", "bootstrap", d, "key", m.leaseKey(d), "err", err)
	}
}

// dropLease deletes the lease on d, just unmounted, unless d is mounted
// again meanwhile or m is closing (the mounts Close leaves, or takes down
// as the node stops, keep theirs until it lapses).
func (m *Manager) dropLease(d bootstrap.Digest) {
	if m.leases.node == "" || m.ctx.Err() != nil {
		return
	}
	defer m.leases.lock(d)()
	m.mu.Lock()
	_, mounted := m.mounts[d]
	m.mu.Unlock()
	if mounted {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), leaseTimeout)
	defer cancel()
	if err := m.store.Delete(ctx, m.leaseKey(d)); err != nil {
		m.log.Warn("lazymount: delete lease", "bootstrap", d, "key", m.leaseKey(d), "err", err)
	}
}
