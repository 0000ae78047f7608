//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/piece"
	"github.com/skiff-dev/skiff/pkg/schedule"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// composeStack is one `docker compose` project of docker-compose.yaml,
// named uniquely and published on free host ports so it cannot clash with
// a stack a user (or another test) runs.
type composeStack struct {
	t       *testing.T
	project string
	env     []string
	ports   map[string]int // compose port variable -> host port
}

// composePorts are the host port variables of docker-compose.yaml.
var composePorts = []string{
	"SKIFF_NATS_PORT", "SKIFF_NATS_MONITOR_PORT", "SKIFF_MINIO_PORT", "SKIFF_MINIO_CONSOLE_PORT",
	"SKIFF_REGISTRY_PORT", "SKIFF_CONVERTER_PORT", "SKIFF_JAEGER_UI_PORT", "SKIFF_OTLP_PORT",
	"SKIFF_SCHEDULER_PORT", "SKIFF_SEEDER_PORT",
}

// startCompose builds the images the stack needs (local stand-ins for the
// third-party ones, which cannot be pulled here) and brings the stack up.
// It is taken down, volumes included, when the test ends, pass or fail.
func startCompose(t *testing.T) *composeStack {
	t.Helper()
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("no Docker engine to run the compose stack on: %v\n%s", err, out)
	}
	root := testenv.RepoRoot()
	if exec.Command("docker", "compose", "version").Run() != nil {
		mustRun(t, root, "make", "-s", "compose-v2")
	}
	mustRun(t, root, filepath.Join(root, "e2e", "compose", "standins.sh"))
	mustRun(t, root, "make", "-s", "images")
	reapStaleStacks(t)

	s := &composeStack{t: t, project: fmt.Sprintf("%s%d-%d", composeProjectPrefix, os.Getpid(), time.Now().UnixNano()%1e6), ports: map[string]int{}}
	s.env = os.Environ()
	addrs := testenv.FreeAddrs(t, len(composePorts))
	for i, v := range composePorts {
		_, port, _ := net.SplitHostPort(addrs[i])
		s.ports[v], _ = strconv.Atoi(port)
		s.env = append(s.env, v+"="+port)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if out, err := s.compose("logs", "--no-color", "--tail", "60"); err == nil || out != "" {
				t.Logf("docker compose logs:\n%s", out)
			}
		}
		if out, err := s.compose("down", "--volumes", "--remove-orphans", "--timeout", "5"); err != nil {
			t.Errorf("docker compose down: %v\n%s", err, out)
		}
	})
	// As a user would (make compose-up): --wait fails on a container that
	// exits or a healthcheck that does not pass.
	if out, err := s.compose("up", "--detach", "--wait", "--wait-timeout", "180"); err != nil {
		t.Fatalf("docker compose up: %v\n%s", err, out)
	}
	return s
}

// composeProjectPrefix starts the project name of every stack this test
// brings up; the test process id follows it.
const composeProjectPrefix = "skiff-e2e-"

// reapStaleStacks takes down the stacks of earlier runs whose test process
// is gone: a run stopped by -timeout or a signal never gets to its
// cleanup, and its containers, network and volumes would stay behind.
func reapStaleStacks(t *testing.T) {
	t.Helper()
	out, err := exec.Command("docker", "compose", "ls", "--all", "--quiet", "--filter", "name="+composeProjectPrefix).Output()
	if err != nil {
		t.Logf("list compose projects: %v", err)
		return
	}
	for _, project := range strings.Fields(string(out)) {
		var pid int
		if _, err := fmt.Sscanf(strings.TrimPrefix(project, composeProjectPrefix), "%d-", &pid); err != nil || processAlive(pid) {
			continue
		}
		cmd := exec.Command("docker", "compose", "--project-name", project, "--file", "docker-compose.yaml",
			"down", "--volumes", "--remove-orphans", "--timeout", "5")
		cmd.Dir = testenv.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Logf("take down stale stack %s: %v\n%s", project, err, out)
		} else {
			t.Logf("took down stale stack %s", project)
		}
	}
}

// processAlive reports whether a process with this id exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// mustRun runs a build step in dir, failing the test with its output.
func mustRun(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// compose runs docker compose on the stack's project.
func (s *composeStack) compose(args ...string) (string, error) {
	cmd := exec.Command("docker", append([]string{"compose", "--project-name", s.project, "--file", "docker-compose.yaml"}, args...)...)
	cmd.Dir, cmd.Env = testenv.RepoRoot(), s.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// url is the host address of a published port.
func (s *composeStack) url(portVar, path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", s.ports[portVar], path)
}

// poll calls ok until it reports true, failing the test with what after
// limit. ok also describes what it saw, for the failure message.
func poll(t *testing.T, what string, limit time.Duration, ok func() (bool, string)) {
	t.Helper()
	var seen string
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		var done bool
		if done, seen = ok(); done {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("%s: not reached in %s; last saw: %s", what, limit, seen)
}

// httpOK reports whether GET url answers 200, decoding a JSON body into v
// when v is not nil.
func httpOK(url string, v any) (bool, string) {
	resp, err := http.Get(url)
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, resp.Status
	}
	if v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			return false, err.Error()
		}
	}
	return true, resp.Status
}

// metric returns the value of sample (a metric name with its labels, as
// the text format writes them) scraped from url.
func metric(url, sample string) (float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s has no %s", url, sample)
}

// jaegerTraces is the part of Jaeger's query API answers the test reads.
type jaegerTraces struct {
	Data []struct {
		Spans []struct {
			OperationName string `json:"operationName"`
			ProcessID     string `json:"processID"`
			Tags          []struct {
				Key   string `json:"key"`
				Value any    `json:"value"`
			} `json:"tags"`
		} `json:"spans"`
		Processes map[string]struct {
			ServiceName string `json:"serviceName"`
		} `json:"processes"`
	} `json:"data"`
}

// seederStats is the part of the seeder's /stats the test reads.
type seederStats struct {
	ID              string `json:"id"`
	Preheats        int64  `json:"preheats"`
	PreheatFailures int64  `json:"preheatFailures"`
	Seeds           int64  `json:"seeds"`
	PieceBytes      int64  `json:"pieceBytes"`
}

// schedulerStats is the part of the scheduler's /stats the test reads.
type schedulerStats struct {
	Table struct {
		Seeders   int   `json:"seeders"`
		Blobs     int   `json:"blobs"`
		HeldBytes int64 `json:"heldBytes"`
	} `json:"table"`
}

// TestComposeStack brings up docker-compose.yaml as a user would, pushes
// an image to its registry from the host, and checks the converter
// published <tag>-skiff with every chunk in MinIO (`skiffctl check` run in
// the stack), recorded it as done on NATS, and traced the conversion in
// Jaeger; that `skiffctl gc` on the stack's registry, dry run and real,
// keeps it; and that the seeder preheated the converted image, the
// scheduler offers it as the holder of every frame, and the preheat is
// traced too.
func TestComposeStack(t *testing.T) {
	s := startCompose(t)
	poll(t, "converter ready", 2*time.Minute, func() (bool, string) { return httpOK(s.url("SKIFF_CONVERTER_PORT", "/healthz"), nil) })
	poll(t, "registry ready", time.Minute, func() (bool, string) { return httpOK(s.url("SKIFF_REGISTRY_PORT", "/v2/"), nil) })
	poll(t, "jaeger ready", time.Minute, func() (bool, string) { return httpOK(s.url("SKIFF_JAEGER_UI_PORT", "/api/services"), nil) })
	// The seeder only preheats conversions completed after it is ready.
	poll(t, "scheduler ready", time.Minute, func() (bool, string) { return httpOK(s.url("SKIFF_SCHEDULER_PORT", "/healthz"), nil) })
	poll(t, "seeder ready", time.Minute, func() (bool, string) { return httpOK(s.url("SKIFF_SEEDER_PORT", "/healthz"), nil) })

	ref := fmt.Sprintf("127.0.0.1:%d/compose/app:v1", s.ports["SKIFF_REGISTRY_PORT"])
	pushImage(t, ref, convImage(t, 11, 1))
	poll(t, "converted image "+ref+image.TagSuffix, 3*time.Minute, func() (bool, string) {
		return hasTag(ref + image.TagSuffix), "no such tag"
	})

	// Inside the stack the registry is registry.localhost:5000, as the
	// converter reached it.
	inStack := "registry.localhost:5000/compose/app:v1"
	out, err := s.compose("run", "--rm", "skiffctl", "check", inStack+image.TagSuffix)
	if err != nil {
		t.Fatalf("skiffctl check in the stack: %v\n%s", err, out)
	}
	t.Logf("skiffctl check:\n%s", out)
	// The record names the image as the pusher did.
	out, err = s.compose("run", "--rm", "skiffctl", "status")
	if err != nil || !regexp.MustCompile(`(?m)^done +`+regexp.QuoteMeta(ref)+` `).MatchString(out) {
		t.Errorf("skiffctl status in the stack: %v\n%s", err, out)
	}
	t.Logf("skiffctl status:\n%s", out)
	if out, err := s.compose("run", "--rm", "skiffctl", "check", "registry.localhost:5000/compose/none:v1"+image.TagSuffix); err == nil {
		t.Errorf("skiffctl check of an image that does not exist succeeded:\n%s", out)
	}
	checkGC(t, s, "registry.localhost:5000", inStack+image.TagSuffix)

	// Spans are exported in batches: wait for the conversion's to land,
	// and for the registry's, which the compose file sends there too.
	poll(t, "conversion trace in jaeger", time.Minute, func() (bool, string) {
		var services struct{ Data []string }
		if ok, seen := httpOK(s.url("SKIFF_JAEGER_UI_PORT", "/api/services"), &services); !ok {
			return false, seen
		}
		if !slices.Contains(services.Data, "distribution") {
			return false, fmt.Sprintf("services %v: no registry (distribution)", services.Data)
		}
		var traces jaegerTraces
		if ok, seen := httpOK(s.url("SKIFF_JAEGER_UI_PORT", "/api/traces?service=skiff-converter&limit=20"), &traces); !ok {
			return false, fmt.Sprintf("services %v; traces: %s", services.Data, seen)
		}
		var ops []string
		for _, tr := range traces.Data {
			for _, sp := range tr.Spans {
				if strings.HasPrefix(sp.OperationName, "convert ") && strings.Contains(sp.OperationName, "compose/app") {
					return true, ""
				}
				ops = append(ops, sp.OperationName)
			}
		}
		return false, fmt.Sprintf("services %v, operations %v", services.Data, ops)
	})

	checkPreheated(t, s, ref+image.TagSuffix)
}

// Lines of skiffctl gc's report (writeGCReport in cmd/skiffctl/gc.go).
var (
	gcDryRun     = regexp.MustCompile(`(?m)^dry run: nothing was changed$`)
	gcLive       = regexp.MustCompile(`(?m)^live: +(\d+) bootstraps named by Skiff images`)
	gcBootstraps = regexp.MustCompile(`(?m)^bootstraps: +(\d+) kept \([^)]*\), (\d+) (?:would be )?deleted`)
)

// checkGC runs skiffctl gc in the stack, as the compose file's header
// shows, on the registry holding the converted image converted (both as
// the stack reaches them): a dry run, then a real one. The image is live
// and younger than the grace period, so neither deletes a bootstrap, and
// the image still checks out afterwards.
func checkGC(t *testing.T, s *composeStack, registry, converted string) {
	t.Helper()
	for _, dryRun := range []bool{true, false} {
		args := []string{"run", "--rm", "skiffctl", "gc"}
		if dryRun {
			args = append(args, "--dry-run")
		}
		out, err := s.compose(append(args, registry)...)
		if err != nil {
			t.Fatalf("skiffctl gc (dry run %v) in the stack: %v\n%s", dryRun, err, out)
		}
		t.Logf("skiffctl gc (dry run %v):\n%s", dryRun, out)
		if got := gcDryRun.MatchString(out); got != dryRun {
			t.Errorf("skiffctl gc (dry run %v): report says dry run: %v", dryRun, got)
		}
		if m := gcLive.FindStringSubmatch(out); m == nil {
			t.Errorf("skiffctl gc (dry run %v): no live line in the report", dryRun)
		} else if n, _ := strconv.Atoi(m[1]); n < 1 {
			t.Errorf("skiffctl gc (dry run %v): %d live bootstraps, want the converted image's at least", dryRun, n)
		}
		if m := gcBootstraps.FindStringSubmatch(out); m == nil {
			t.Errorf("skiffctl gc (dry run %v): no bootstraps line in the report", dryRun)
		} else if kept, _ := strconv.Atoi(m[1]); kept < 1 || m[2] != "0" {
			t.Errorf("skiffctl gc (dry run %v): %s bootstraps kept, %s deleted; want the converted image's kept, none deleted", dryRun, m[1], m[2])
		}
	}
	if out, err := s.compose("run", "--rm", "skiffctl", "check", converted); err != nil {
		t.Fatalf("skiffctl check after skiffctl gc: %v\n%s", err, out)
	}
}

// checkPreheated checks the P2P side of the stack saw the conversion of
// ref (the converted image, as the host reaches it): the seeder preheated
// it, the scheduler knows the seeder at its in-stack address as a holder
// of every frame of the image, the seeder serves a frame from what it
// holds, and its preheat is traced in Jaeger.
func checkPreheated(t *testing.T, s *composeStack, ref string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, _, err := image.LoadBootstrap(ctx, ref)
	if err != nil {
		t.Fatalf("bootstrap of %s: %v", ref, err)
	}
	var stored int64
	for _, fr := range b.Frames {
		stored += int64(fr.CompressedSize)
	}
	if len(b.Frames) == 0 {
		t.Fatalf("%s has no frames to preheat", ref)
	}

	var ss seederStats
	poll(t, "seeder preheated "+ref, 2*time.Minute, func() (bool, string) {
		if ok, seen := httpOK(s.url("SKIFF_SEEDER_PORT", "/stats"), &ss); !ok {
			return false, seen
		}
		return ss.Preheats == 1 && ss.PieceBytes >= stored, fmt.Sprintf("%+v (image: %d bytes in %d frames)", ss, stored, len(b.Frames))
	})
	if ss.PreheatFailures != 0 || ss.ID != "seeder" {
		t.Errorf("seeder stats %+v", ss)
	}
	var sched schedulerStats
	poll(t, "scheduler knows the seeder's holdings", time.Minute, func() (bool, string) {
		if ok, seen := httpOK(s.url("SKIFF_SCHEDULER_PORT", "/stats"), &sched); !ok {
			return false, seen
		}
		tb := sched.Table
		return tb.Seeders == 1 && tb.Blobs >= len(b.Blobs) && tb.HeldBytes >= stored, fmt.Sprintf("%+v", tb)
	})

	// Ask the schedulers for the parents of every frame, as an agent
	// would over the stack's NATS: the seeder is named, at the address
	// peers in the stack dial, as holding it (not as the one to seed it).
	nc, err := bus.Connect(fmt.Sprintf("nats://127.0.0.1:%d", s.ports["SKIFF_NATS_PORT"]), "compose-test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for i, fr := range b.Frames {
		blob := b.Blobs[fr.Blob]
		var reply skiffv1.ParentsReply
		req := schedule.ParentsRequestMessage(schedule.ParentsRequest{PeerID: "compose-test", Blob: blob, Off: fr.Offset, Size: int64(fr.CompressedSize)})
		if err := bus.Request(ctx, nc, bus.SubjectParents, req, &reply); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		parents := schedule.ParentsFromMessage(&reply)
		if len(parents) != 1 || parents[0].ID != "seeder" || parents[0].Addr != "seeder:8092" ||
			parents[0].Role != schedule.RoleSeeder || parents[0].Seeds {
			t.Fatalf("frame %d (blob %s at %d): parents %+v, want the seeder holding it", i, blob, fr.Offset, parents)
		}
	}

	// The seeder serves a frame from its holdings, without seeding it.
	fr := b.Frames[len(b.Frames)-1]
	blob := b.Blobs[fr.Blob]
	url := s.url("SKIFF_SEEDER_PORT", fmt.Sprintf("%s%s?offset=%d&size=%d", piece.Path, blob.Hex(), fr.Offset, fr.CompressedSize))
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || len(body) != int(fr.CompressedSize) {
		t.Fatalf("GET %s: %s, %d bytes (want %d), %v", url, resp.Status, len(body), fr.CompressedSize, err)
	}
	if ok, seen := httpOK(s.url("SKIFF_SEEDER_PORT", "/stats"), &ss); !ok || ss.Seeds != 0 {
		t.Errorf("seeder stats after serving a held frame: %s %+v", seen, ss)
	}

	// Prometheus sees the same: the conversion, the preheat, the frame
	// served and the parents asked for.
	for _, m := range []struct {
		port, sample string
		least        float64
	}{
		{"SKIFF_CONVERTER_PORT", `skiff_converter_requests_total{outcome="completed"}`, 1},
		{"SKIFF_SEEDER_PORT", `skiff_seeder_preheats_total{result="completed"}`, 1},
		{"SKIFF_SEEDER_PORT", `skiff_seeder_piece_requests_total{result="served"}`, 1},
		{"SKIFF_SCHEDULER_PORT", `skiff_scheduler_parents_requests_total`, float64(len(b.Frames))},
	} {
		if v, err := metric(s.url(m.port, "/metrics"), m.sample); err != nil || v < m.least {
			t.Errorf("%s = %v (%v), want at least %v", m.sample, v, err, m.least)
		}
	}

	// The preheat is traced, in the trace of the conversion that
	// triggered it.
	poll(t, "preheat trace in jaeger", time.Minute, func() (bool, string) {
		var traces jaegerTraces
		if ok, seen := httpOK(s.url("SKIFF_JAEGER_UI_PORT", "/api/traces?service=skiff-seeder&operation=seeder.preheat&limit=20"), &traces); !ok {
			return false, seen
		}
		var seen []string
		for _, tr := range traces.Data {
			convert := false
			var preheat bool
			for _, sp := range tr.Spans {
				svc := tr.Processes[sp.ProcessID].ServiceName
				seen = append(seen, svc+":"+sp.OperationName)
				convert = convert || (svc == "skiff-converter" && strings.HasPrefix(sp.OperationName, "convert "))
				if svc != "skiff-seeder" || sp.OperationName != "seeder.preheat" {
					continue
				}
				for _, tag := range sp.Tags {
					if v, ok := tag.Value.(string); ok && tag.Key == "skiff.target" && strings.Contains(v, "compose/app") {
						preheat = true
					}
				}
			}
			if preheat && convert {
				return true, ""
			}
		}
		return false, fmt.Sprintf("spans %v", seen)
	})
}
