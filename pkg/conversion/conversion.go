// Package conversion models the record the converter service keeps for
// every source manifest it is asked to convert. Records live in a NATS KV
// bucket (see pkg/bus), one per source digest, and are updated only by
// compare-and-swap on their revision: that is what lets any number of
// converter processes share work without converting an image twice, and
// what `skiffctl status` reads.
package conversion

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// State is where a conversion stands.
type State string

// States. Pending and Running can go back to Pending (retry) or on to Done
// or Failed; Done and Failed are final for the push that created them.
const (
	Pending State = "pending" // accepted, waiting for a worker or a retry
	Running State = "running" // a worker owns it
	Done    State = "done"    // the Skiff manifest is pushed
	Failed  State = "failed"  // attempts exhausted or the source is unusable
)

// Final reports whether no worker will touch the conversion again unless it
// is requested anew.
func (s State) Final() bool { return s == Done || s == Failed }

// Record is the stored state of one conversion.
type Record struct {
	// Source is "<registry>/<repository>:<tag>" as first pushed.
	Source       string `json:"source"`
	SourceDigest string `json:"sourceDigest"`
	// Target is the Skiff image reference, Source's tag plus "-skiff".
	Target string `json:"target"`
	State  State  `json:"state"`
	// Seq is the stream sequence of the request message that owns the
	// record. A redelivery of that message carries the same Seq; a new
	// request for the same digest carries another.
	Seq      uint64 `json:"seq"`
	Attempts int    `json:"attempts"`
	// Worker names the process that last took the conversion.
	Worker string `json:"worker,omitempty"`
	Reason string `json:"reason,omitempty"`

	TargetDigest    string `json:"targetDigest,omitempty"`
	BootstrapDigest string `json:"bootstrapDigest,omitempty"`
	// BootstrapDigests lists every platform's bootstrap when the source
	// is a multi-platform index (BootstrapDigest is the first).
	BootstrapDigests []string `json:"bootstrapDigests,omitempty"`
	BootstrapSize    int64    `json:"bootstrapSize,omitempty"`
	SourceBytes      int64    `json:"sourceBytes,omitempty"`
	StoredBytes      int64    `json:"storedBytes,omitempty"`
	NewBytes         int64    `json:"newBytes,omitempty"`
	// Duration of the successful (or last) attempt.
	Duration time.Duration `json:"duration,omitempty"`

	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

// Key is the KV key of the record for a source digest: KV keys may not hold
// ':', so "sha256:<hex>" becomes "sha256.<hex>".
func Key(digest string) (string, error) {
	alg, hex, ok := strings.Cut(digest, ":")
	if !ok || alg == "" || hex == "" || !token(alg) || !token(hex) {
		return "", fmt.Errorf("conversion: %q is not a digest", digest)
	}
	return alg + "." + hex, nil
}

func token(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// Marshal encodes r for the KV bucket.
func (r *Record) Marshal() ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("conversion: encode record %s: %w", r.SourceDigest, err)
	}
	return b, nil
}

// Unmarshal decodes a record read from the KV bucket.
func Unmarshal(b []byte) (*Record, error) {
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("conversion: decode record: %w", err)
	}
	if r.SourceDigest == "" || r.State == "" {
		return nil, fmt.Errorf("conversion: decode record: missing source digest or state")
	}
	return &r, nil
}

// Bootstraps lists the bootstrap digests of the conversion r records.
func (r *Record) Bootstraps() []string {
	if len(r.BootstrapDigests) > 0 {
		return r.BootstrapDigests
	}
	if r.BootstrapDigest != "" {
		return []string{r.BootstrapDigest}
	}
	return nil
}
