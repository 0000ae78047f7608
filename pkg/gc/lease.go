package gc

import "time"

// Node agents keep a lease (store.LeaseKey) on every bootstrap they have
// mounted: its containers read chunks from the store for as long as they
// run, and an image may leave every registry (or its tag move on) while
// they do. An agent writes each lease again every LeaseRefresh; a
// collector counts a bootstrap whose lease it finds younger than LeaseTTL
// as live. An agent that dies without deleting its leases holds their
// images for LeaseTTL at most.
const (
	LeaseRefresh = time.Hour
	LeaseTTL     = 4 * LeaseRefresh
)
