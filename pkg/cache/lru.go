package cache

import (
	"container/list"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// lru is the size-bounded recency index shared by the disk and memory
// caches. It is not safe for concurrent use; its owner locks around it.
type lru[V any] struct {
	max   int64 // 0: unbounded
	bytes int64
	order *list.List // front: most recently used
	items map[bootstrap.Digest]*list.Element
}

type lruEntry[V any] struct {
	key  bootstrap.Digest
	size int64
	val  V
}

func newLRU[V any](max int64) *lru[V] {
	return &lru[V]{max: max, order: list.New(), items: map[bootstrap.Digest]*list.Element{}}
}

// get returns the value of d and marks it most recently used.
func (l *lru[V]) get(d bootstrap.Digest) (V, bool) {
	e, ok := l.use(d)
	return e.val, ok
}

// use returns d's entry and marks it most recently used.
func (l *lru[V]) use(d bootstrap.Digest) (lruEntry[V], bool) {
	e, ok := l.items[d]
	if !ok {
		return lruEntry[V]{}, false
	}
	l.order.MoveToFront(e)
	return *e.Value.(*lruEntry[V]), true
}

func (l *lru[V]) has(d bootstrap.Digest) bool {
	_, ok := l.items[d]
	return ok
}

// add inserts d as the most recently used entry and returns the entries
// evicted to stay within the limit. The new entry itself is never evicted,
// so callers check fits first.
func (l *lru[V]) add(d bootstrap.Digest, size int64, v V) []lruEntry[V] {
	if e, ok := l.items[d]; ok {
		l.order.MoveToFront(e)
		return nil
	}
	ent := &lruEntry[V]{key: d, size: size, val: v}
	l.items[d] = l.order.PushFront(ent)
	l.bytes += size
	var evicted []lruEntry[V]
	for l.max > 0 && l.bytes > l.max {
		last := l.order.Back()
		victim := last.Value.(*lruEntry[V])
		if victim.key == d {
			break
		}
		l.removeElement(last)
		evicted = append(evicted, *victim)
	}
	return evicted
}

// fits reports whether an entry of size can be held at all.
func (l *lru[V]) fits(size int64) bool { return l.max <= 0 || size <= l.max }

func (l *lru[V]) remove(d bootstrap.Digest) bool {
	e, ok := l.items[d]
	if ok {
		l.removeElement(e)
	}
	return ok
}

func (l *lru[V]) removeElement(e *list.Element) {
	ent := l.order.Remove(e).(*lruEntry[V])
	delete(l.items, ent.key)
	l.bytes -= ent.size
}

func (l *lru[V]) len() int { return len(l.items) }
