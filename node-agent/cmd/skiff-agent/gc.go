package main

import "runtime/debug"

// mountdGCPercent is the mount process' GOGC unless the environment sets
// one. Its heap is mostly chunk bytes, which hold no pointers and cost the
// collector little to mark, and it allocates a fresh buffer for every
// frame it decompresses. With Go's default of 100 the heap grows to twice
// the chunks it holds before each collection, and every page of that
// growth is touched for the first time: a page fault each, which a VM may
// trap to its hypervisor. At 25 it reuses freed buffers instead. In the
// benchmark's cold small-file command (2 vCPUs of such a VM) the reading
// took 0.42–0.55 s at 25 or 10 against 0.56–0.72 s at 100.
const mountdGCPercent = 25

// tuneGC applies mountdGCPercent unless GOGC is set, and returns the
// setting in force.
func tuneGC(getenv func(string) string) int {
	if v := getenv("GOGC"); v != "" {
		// The runtime applied it at start; setting is how to read it.
		old := debug.SetGCPercent(100)
		debug.SetGCPercent(old)
		return old
	}
	debug.SetGCPercent(mountdGCPercent)
	return mountdGCPercent
}
