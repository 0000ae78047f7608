package cache

import "container/list"

// lru is the size-bounded recency index shared by the disk and memory
// caches. It is not safe for concurrent use; its owner locks around it.
type lru[K comparable, V any] struct {
	max   int64 // 0: unbounded
	bytes int64
	order *list.List // front: most recently used
	items map[K]*list.Element
}

type lruEntry[K comparable, V any] struct {
	key  K
	size int64
	val  V
}

func newLRU[K comparable, V any](max int64) *lru[K, V] {
	return &lru[K, V]{max: max, order: list.New(), items: map[K]*list.Element{}}
}

// get returns the value of d and marks it most recently used.
func (l *lru[K, V]) get(d K) (V, bool) {
	e, ok := l.use(d)
	return e.val, ok
}

// use returns d's entry and marks it most recently used.
func (l *lru[K, V]) use(d K) (lruEntry[K, V], bool) {
	e, ok := l.items[d]
	if !ok {
		return lruEntry[K, V]{}, false
	}
	l.order.MoveToFront(e)
	return *e.Value.(*lruEntry[K, V]), true
}

func (l *lru[K, V]) has(d K) bool {
	_, ok := l.items[d]
	return ok
}

// add inserts d as the most recently used entry and returns the entries
// evicted to stay within the limit. The new entry itself is never evicted,
// so callers check fits first.
func (l *lru[K, V]) add(d K, size int64, v V) []lruEntry[K, V] {
	if e, ok := l.items[d]; ok {
		l.order.MoveToFront(e)
		return nil
	}
	ent := &lruEntry[K, V]{key: d, size: size, val: v}
	l.items[d] = l.order.PushFront(ent)
	l.bytes += size
	var evicted []lruEntry[K, V]
	for l.max > 0 && l.bytes > l.max {
		last := l.order.Back()
		victim := last.Value.(*lruEntry[K, V])
		if victim.key == d {
			break
		}
		l.removeElement(last)
		evicted = append(evicted, *victim)
	}
	return evicted
}

// fits reports whether an entry of size can be held at all.
func (l *lru[K, V]) fits(size int64) bool { return l.max <= 0 || size <= l.max }

func (l *lru[K, V]) remove(d K) bool {
	e, ok := l.items[d]
	if ok {
		l.removeElement(e)
	}
	return ok
}

func (l *lru[K, V]) removeElement(e *list.Element) {
	ent := l.order.Remove(e).(*lruEntry[K, V])
	delete(l.items, ent.key)
	l.bytes -= ent.size
}

func (l *lru[K, V]) len() int { return len(l.items) }
