// Package e2e holds Skiff's end-to-end tests: whole flows (convert, push,
// mount through the snapshotter, run a container) against real servers. The
// tests carry the "e2e" build tag and run with `make e2e`.
package e2e
