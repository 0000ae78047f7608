//go:build e2e

package e2e

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/skiff-dev/skiff/internal/testenv"
)

// TestMakeDemo runs `make demo`, the README's first command, and checks it
// exits 0 after showing the event-driven conversion and the lazy read.
func TestMakeDemo(t *testing.T) {
	cmd := exec.Command("make", "-s", "demo")
	cmd.Dir = testenv.RepoRoot()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make demo: %v\n%s", err, out)
	}
	for _, want := range []string{"event conversion.completed", "appeared without a second conversion", "identical to the pushed file", "every image converted exactly once"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("make demo output lacks %q:\n%s", want, out)
		}
	}
}
