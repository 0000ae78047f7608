package lazymount

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/dir"
)

// takeoverEnv is an image in a directory store and a Manager of a state
// directory serving it over a unix socket, as skiff-agent mountd does.
type takeoverEnv struct {
	root, sock string
	st         store.Store
	d          bootstrap.Digest
	data       []byte
	old        *Manager
	handedOver chan net.Conn
	erofs      bool   // managers mount in EROFS image mode
	node       string // managers made from now on keep leases under it
}

func newTakeoverEnv(t *testing.T, handover bool) *takeoverEnv {
	t.Helper()
	return newTakeoverEnvIn(t, handover, false)
}

func newTakeoverEnvIn(t *testing.T, handover, erofs bool) *takeoverEnv {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		t.Skip("mounts are handed over only for root, with /dev/fuse")
	}
	data := bytes.Repeat([]byte("lazy mounts change hands\n"), 5000)
	img, err := fetchtest.Build([]fetchtest.Entry{
		{Path: "/", Mode: bootstrap.ModeDir | 0o755},
		{Path: "/data", Mode: bootstrap.ModeRegular | 0o644, Data: data},
	}, fetchtest.Options{ChunkSize: 16 << 10, Compression: bootstrap.Zstd})
	if err != nil {
		t.Fatal(err)
	}
	st, d := uploaded(t, img)
	e := &takeoverEnv{root: t.TempDir(), st: st, d: d, data: data, handedOver: make(chan net.Conn, 1), erofs: erofs}
	e.sock = filepath.Join(e.root, "mountd.sock")
	e.old = e.manager(t)
	opts := HandlerOptions{Version: "old"}
	if handover {
		opts.HandedOver = func(c net.Conn) { e.handedOver <- c }
	}
	l, err := net.Listen("unix", e.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(e.old, opts)}
	go srv.Serve(l)
	t.Cleanup(func() {
		srv.Close()
		e.old.Close()
		unix.Unmount(e.old.Mountpoint(d), unix.MNT_DETACH)
	})
	return e
}

// mount has the old Manager mount the image, through its socket.
func (e *takeoverEnv) mount(t *testing.T) (*Client, string) {
	t.Helper()
	client := NewClient(e.sock)
	mp, err := client.Mount(context.Background(), e.d)
	if err != nil {
		t.Fatal(err)
	}
	return client, mp
}

func (e *takeoverEnv) manager(t *testing.T) *Manager {
	m, err := New(e.root, e.st, fetch.New(nil, []fetch.Source{fetch.NewStoreSource("store", e.st)}), Options{EROFS: e.erofs, Node: e.node, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// commit has a new Manager take the mounts of tk over and serve them,
// the old one closing as its process would exit. The new one is closed
// when the test ends.
func (e *takeoverEnv) commit(t *testing.T, tk *Takeover) *Manager {
	t.Helper()
	ctx := context.Background()
	next := e.manager(t)
	t.Cleanup(func() { next.Close() })
	for _, h := range tk.Mounts {
		if err := next.Resume(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	// The old process exits once it has heard the new one took over; here
	// it closes its end instead.
	go func() {
		conn := <-e.handedOver
		e.old.Close()
		conn.Close()
	}()
	if err := tk.Commit(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := next.StartResumed(); err != nil {
		t.Fatal(err)
	}
	return next
}

// TestTakeover: a new Manager takes the mounts of one serving on a
// socket; the old one then refuses requests and leaves the mount in place
// when closed, and the new one serves it.
func TestTakeover(t *testing.T) {
	for _, mode := range []string{"fuse tree", "erofs"} {
		t.Run(mode, func(t *testing.T) { testTakeover(t, mode == "erofs") })
	}
}

func testTakeover(t *testing.T, erofs bool) {
	e := newTakeoverEnvIn(t, true, erofs)
	ctx := context.Background()
	client, mp := e.mount(t)
	var sfs unix.Statfs_t
	if err := unix.Statfs(mp, &sfs); err != nil || (sfs.Type == erofsMagic) != erofs {
		t.Fatalf("statfs %s: type %#x, %v (EROFS: %v)", mp, sfs.Type, err, erofs)
	}
	if st, err := client.Status(ctx); err != nil || st.Version != "old" || st.PID != os.Getpid() || st.Generation == 0 {
		t.Fatalf("status: %+v %v", st, err)
	}
	f, err := os.Open(filepath.Join(mp, "data"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	tk, err := TakeOver(ctx, e.sock)
	if err != nil {
		t.Fatal(err)
	}
	if len(tk.Mounts) != 1 || tk.Mounts[0].Bootstrap != e.d || tk.Mounts[0].Mountpoint != mp || tk.Mounts[0].Dev == nil {
		t.Fatalf("handed mounts: %+v", tk.Mounts)
	}
	// A mount asked for meanwhile waits for the next mount process; this
	// one, given a short time, hears why it waited.
	mctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = client.Mount(mctx, e.d)
	cancel()
	if !errors.Is(err, errReplacing) {
		t.Fatalf("mount while handing over: %v", err)
	}
	next := e.commit(t, tk)
	if got := next.Mounts(); len(got) != 1 || got[0].Bootstrap != e.d {
		t.Fatalf("new manager serves %v", got)
	}
	// The old manager let go without unmounting.
	if got, err := os.ReadFile(filepath.Join(mp, "data")); err != nil || !bytes.Equal(got, e.data) {
		t.Fatalf("read after the takeover: %d bytes, %v", len(got), err)
	}
	if err := next.Unmount(ctx, e.d); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// erofsMagic is EROFS' statfs f_type.
const erofsMagic = 0xE0F5E1E2

// TestTakeoverAbort: a successor that goes away before committing leaves
// the mounts with the old Manager, which takes requests again.
func TestTakeoverAbort(t *testing.T) {
	e := newTakeoverEnv(t, true)
	ctx := context.Background()
	client, mp := e.mount(t)
	tk, err := TakeOver(ctx, e.sock)
	if err != nil {
		t.Fatal(err)
	}
	tk.Abort()
	for _, h := range tk.Mounts {
		h.Dev.Close()
	}
	var mounted error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, mounted = client.Mount(ctx, e.d); mounted == nil {
			break
		}
	}
	if mounted != nil {
		t.Fatalf("old manager after an abandoned takeover: %v", mounted)
	}
	if got, err := os.ReadFile(filepath.Join(mp, "data")); err != nil || !bytes.Equal(got, e.data) {
		t.Fatalf("read after an abandoned takeover: %d bytes, %v", len(got), err)
	}
	select {
	case <-e.handedOver:
		t.Fatal("old manager handed over without the successor's word")
	default:
	}
}

// TestTakeoverRefused: a mount process that does not hand over says so.
func TestTakeoverRefused(t *testing.T) {
	e := newTakeoverEnv(t, false)
	if _, err := TakeOver(context.Background(), e.sock); !errors.Is(err, ErrNoHandover) {
		t.Fatalf("err = %v, want ErrNoHandover", err)
	}
}

// TestTakeoverFromHeldDevices: copies of the FUSE devices, as an agent
// keeps them, are handed to a new Manager by a stand-in for a dead mount
// process, the same way a live one hands them over.
func TestTakeoverFromHeldDevices(t *testing.T) {
	e := newTakeoverEnv(t, true)
	ctx := context.Background()
	client, mp := e.mount(t)
	held, err := client.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 1 || held[0].Bootstrap != e.d || held[0].Dev == nil {
		t.Fatalf("copies: %+v", held)
	}
	defer held[0].Dev.Close()
	// Copies leave the old Manager as it was.
	if got := e.old.Mounts(); len(got) != 1 {
		t.Fatalf("old manager after copying: %v", got)
	}
	standIn := filepath.Join(t.TempDir(), "mountd.sock")
	l, err := net.Listen("unix", standIn)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- ServeHeld(ctx, l, held, slog.Default()) }()
	if err := NewClient(standIn).Ping(ctx); err != nil {
		t.Fatalf("stand-in does not answer pings: %v", err)
	}
	tk, err := TakeOver(ctx, standIn)
	if err != nil {
		t.Fatal(err)
	}
	next := e.manager(t)
	defer next.Close()
	if err := next.Resume(ctx, tk.Mounts[0]); err != nil {
		t.Fatal(err)
	}
	if err := tk.Commit(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if err := next.StartResumed(); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mp, "data")); err != nil || !bytes.Equal(got, e.data) {
		t.Fatalf("read after the takeover: %d bytes, %v", len(got), err)
	}
}

// uploaded puts img's blobs and bootstrap in a new directory store and
// returns it with the bootstrap's digest.
func uploaded(t *testing.T, img *fetchtest.Image) (store.Store, bootstrap.Digest) {
	t.Helper()
	st, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := img.Upload(ctx, st); err != nil {
		t.Fatal(err)
	}
	blob, err := bootstrap.Encode(img.Bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	d := bootstrap.Sum(blob)
	if err := st.Put(ctx, store.BootstrapKey(d.Hex()), bytes.NewReader(blob), int64(len(blob))); err != nil {
		t.Fatal(err)
	}
	return st, d
}

// TestHandoverSavesStartupSet: what a mount recorded before its process
// handed it over becomes the image's startup set, and saving it gives the
// store a bounded time, so that a store outage cannot hold the successor
// up past its grace.
func TestHandoverSavesStartupSet(t *testing.T) {
	for _, outage := range []bool{false, true} {
		t.Run(map[bool]string{false: "store up", true: "store down"}[outage], func(t *testing.T) {
			e := newTakeoverEnv(t, true)
			ctx := context.Background()
			e.old.opts.RecordWindow = time.Minute
			down := &downStore{Store: e.st, deadline: make(chan time.Duration, 1)}
			if outage {
				e.old.store = down
			}
			_, mp := e.mount(t)
			if got, err := os.ReadFile(filepath.Join(mp, "data")); err != nil || !bytes.Equal(got, e.data) {
				t.Fatalf("read: %d bytes, %v", len(got), err)
			}
			tk, err := TakeOver(ctx, e.sock)
			if err != nil {
				t.Fatal(err)
			}
			next := e.commit(t, tk)
			defer next.Unmount(ctx, e.d)
			_, err = e.st.Stat(ctx, store.StartupKey(e.d.Hex()))
			if outage {
				select {
				case d := <-down.deadline:
					if d <= 0 || d > saveTimeout {
						t.Fatalf("the startup set was saved with %s left, want at most %s", d, saveTimeout)
					}
				default:
					t.Fatal("no startup set was saved")
				}
				if err == nil {
					t.Fatal("a startup set is in the store that was down")
				}
				return
			}
			if err != nil {
				t.Fatalf("no startup set after the handover: %v", err)
			}
		})
	}
}

// downStore fails every Put, reporting how long the caller would have
// waited for it.
type downStore struct {
	store.Store
	deadline chan time.Duration
}

func (s *downStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	d := time.Duration(-1)
	if dl, ok := ctx.Deadline(); ok {
		d = time.Until(dl)
	}
	select {
	case s.deadline <- d:
	default:
	}
	return errors.New("store is down")
}

// TestCloseSavesStartupSetInBoundedTime: a process that stops saves what
// its mounts recorded, giving the store a bounded time, so that a store
// outage cannot hold its unmounts past the kubelet's grace.
func TestCloseSavesStartupSetInBoundedTime(t *testing.T) {
	e := newTakeoverEnv(t, true)
	e.old.opts.RecordWindow = time.Minute
	down := &downStore{Store: e.st, deadline: make(chan time.Duration, 1)}
	e.old.store = down
	_, mp := e.mount(t)
	if got, err := os.ReadFile(filepath.Join(mp, "data")); err != nil || !bytes.Equal(got, e.data) {
		t.Fatalf("read: %d bytes, %v", len(got), err)
	}
	if err := e.old.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-down.deadline:
		if d <= 0 || d > saveTimeout {
			t.Fatalf("the startup set was saved with %s left, want at most %s", d, saveTimeout)
		}
	default:
		t.Fatal("no startup set was saved")
	}
	if len(e.old.Mounts()) != 0 {
		t.Fatal("mounts left after Close")
	}
}

// TestCommitAfterTheOldProcessGaveUp: a successor that took longer to
// resume the mounts than the old process waits for its ack learns that
// the old one keeps the mounts, and the old one serves them on.
func TestCommitAfterTheOldProcessGaveUp(t *testing.T) {
	defer func(d time.Duration) { ackTimeout = d }(ackTimeout)
	ackTimeout = 100 * time.Millisecond
	e := newTakeoverEnv(t, true)
	ctx := context.Background()
	_, mp := e.mount(t)
	tk, err := TakeOver(ctx, e.sock)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // resuming, slowly
	if err := tk.Commit(ctx, time.Second); !errors.Is(err, ErrNotCommitted) {
		t.Fatalf("commit after the old process gave up: %v, want ErrNotCommitted", err)
	}
	select {
	case <-e.handedOver:
		t.Fatal("the old process handed its mounts over")
	default:
	}
	if len(e.old.Mounts()) != 1 {
		t.Fatalf("the old process has %d mounts, want its one", len(e.old.Mounts()))
	}
	if got, err := os.ReadFile(filepath.Join(mp, "data")); err != nil || !bytes.Equal(got, e.data) {
		t.Fatalf("read from the old process after the failed takeover: %d bytes, %v", len(got), err)
	}
}

// TestGone: a process is gone once it is a zombie, which kill(pid, 0)
// does not tell from a live one, and once it is reaped.
func TestGone(t *testing.T) {
	if gone(os.Getpid(), 0) {
		t.Fatal("this process is gone")
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if gone(pid, 0) {
		t.Fatal("a sleeping child is gone")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	// Not reaped yet: a zombie.
	if !gone(pid, 5*time.Second) {
		t.Fatal("a killed, unreaped child is not gone")
	}
	cmd.Wait()
	if !gone(pid, 0) {
		t.Fatal("a reaped child is not gone")
	}
}
