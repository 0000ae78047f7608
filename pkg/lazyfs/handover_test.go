package lazyfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/cache"
	"github.com/skiff-dev/skiff/pkg/erofs"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
	"github.com/skiff-dev/skiff/pkg/store/dir"
)

// The old server of TestHandover is another process: this test binary,
// run again with oldServerEnv naming its mountpoint.
const oldServerEnv = "LAZYFS_TEST_OLD_SERVER"

func TestMain(m *testing.M) {
	if mp := os.Getenv(oldServerEnv); mp != "" {
		if err := runOldServer(mp); err != nil {
			fmt.Fprintln(os.Stderr, "old server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// oldServer files, beside the mountpoint: the image, its store, the
// socket the connection is handed over on, and the marker the old server
// leaves when it holds a read it will never answer.
func oldServerFiles(mp string) (boot, store, sock, stalled string) {
	base := filepath.Dir(mp)
	return filepath.Join(base, "bootstrap"), filepath.Join(base, "store"), filepath.Join(base, "handover.sock"), filepath.Join(base, "stalled")
}

// stallFile is read by the old server, which never answers: the reader
// must get its bytes from the new server once the old one is gone.
const stallFile = "/stall"

// runOldServer mounts the image, hands the connection to the test over
// the socket, and serves until killed; reads of stallFile hang.
func runOldServer(mp string) error {
	boot, storeDir, sock, stalled := oldServerFiles(mp)
	blob, err := os.ReadFile(boot)
	if err != nil {
		return err
	}
	b, err := bootstrap.Decode(blob)
	if err != nil {
		return err
	}
	st, err := dir.New(storeDir)
	if err != nil {
		return err
	}
	stall, ok := b.LookupPath(stallFile)
	if !ok {
		return errors.New("no stall file")
	}
	f, opts, err := handoverFetcher(mp, b, st)
	if err != nil {
		return err
	}
	r := &stallingReader{Fetcher: f, stall: b.FileChunks(stall)[0], marker: stalled}
	var srv *Server
	if how := os.Getenv(stallOpenEnv); how != "" {
		srv, err = mountStallingOpen(mp, b, r, opts, how, stalled)
	} else {
		srv, err = Mount(context.Background(), mp, b, r, opts)
	}
	if err != nil {
		return err
	}
	dev, settings, err := srv.Handover()
	if err != nil {
		return err
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return err
	}
	if _, _, err := conn.WriteMsgUnix(settings, unix.UnixRights(int(dev.Fd())), nil); err != nil {
		return err
	}
	srv.Wait()
	return nil
}

// passthroughEnv, set, has both servers of TestHandoverPassthrough serve
// large local files by passthrough.
const passthroughEnv = "LAZYFS_TEST_PASSTHROUGH"

// imageEnv, set, has both servers of TestHandoverImage mount in image
// mode.
const imageEnv = "LAZYFS_TEST_IMAGE"

// handoverFetcher is what each server of a handover test reads through,
// with the mount options: with passthrough, a disk cache holding /big and
// /big2 entirely (so they are opened by passthrough) and the open-state
// file.
func handoverFetcher(mp string, b *bootstrap.Bootstrap, st *dir.Dir) (*fetch.Fetcher, Options, error) {
	if os.Getenv(imageEnv) != "" {
		// Both servers lay the image out alike: the same build of Build.
		layout, err := erofs.Build(b)
		if err != nil {
			return nil, Options{}, err
		}
		return fetch.New(nil, []fetch.Source{fetch.NewStoreSource("store", st)}), Options{Image: layout, ImageDir: filepath.Join(filepath.Dir(mp), "image")}, nil
	}
	if os.Getenv(passthroughEnv) == "" {
		return fetch.New(nil, []fetch.Source{fetch.NewStoreSource("store", st)}), Options{}, nil
	}
	c, err := cache.Open(filepath.Join(filepath.Dir(mp), "cache"), 0)
	if err != nil {
		return nil, Options{}, err
	}
	f := fetch.New(c, []fetch.Source{fetch.NewStoreSource("store", st)})
	for _, p := range []string{"/big", "/big2"} {
		ino, _ := b.LookupPath(p)
		if err := f.Prefetch(context.Background(), b, []uint32{ino}); err != nil {
			return nil, Options{}, err
		}
		if err := f.Materialize(context.Background(), b, ino); err != nil {
			return nil, Options{}, err
		}
	}
	return f, Options{Passthrough: true, OpenState: filepath.Join(filepath.Dir(mp), "opens")}, nil
}

// stallOpenEnv, set, has the old server of a passthrough handover test
// stop in the middle of the first open of /big and never answer it:
// "registered" once it has registered the backing file, "counted" once
// it has counted and recorded the open.
const stallOpenEnv = "LAZYFS_TEST_STALL_OPEN"

// mountStallingOpen mounts like Mount, with Open stopping as how says
// (see stallOpenEnv).
func mountStallingOpen(mp string, b *bootstrap.Bootstrap, r ChunkReader, opts Options, how, marker string) (*Server, error) {
	big, ok := b.LookupPath("/big")
	if !ok {
		return nil, errors.New("no /big")
	}
	opts = opts.withDefaults()
	fsys := newFileSystem(b, r, opts)
	if fsys.backing == nil {
		return nil, errors.New("no passthrough")
	}
	mo := mountOptions(opts, true)
	dev, err := mountDevice(mp, mo.AllowOther)
	if err != nil {
		return nil, err
	}
	return serveMounted(&stallingOpen{fileSystem: fsys, ino: big, how: how, marker: marker}, fsys, dev, mp, &mo)
}

// stallingOpen serves like its fileSystem, except for the first open of
// inode ino, which it takes as far as how says and never answers: the
// server dies there.
type stallingOpen struct {
	*fileSystem
	ino     uint32
	how     string
	marker  string
	stalled atomic.Bool
}

func (s *stallingOpen) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if ino, _ := s.inode(in.NodeId); ino != s.ino || s.stalled.Swap(true) {
		return s.fileSystem.Open(cancel, in, out)
	}
	switch s.how {
	case "registered":
		st := s.file(s.ino)
		st.mu.Lock()
		ok := s.passthrough(context.Background(), s.ino, st)
		st.mu.Unlock()
		if !ok {
			panic("no backing file registered")
		}
	case "counted":
		if st := s.fileSystem.Open(cancel, in, out); !st.Ok() || out.OpenFlags&fuse.FOPEN_PASSTHROUGH == 0 {
			panic(fmt.Sprintf("open: %v, flags %#x", st, out.OpenFlags))
		}
	default:
		panic("stall an open how? " + s.how)
	}
	os.WriteFile(s.marker, nil, 0o600)
	select {}
}

type stallingReader struct {
	*fetch.Fetcher
	stall  uint32
	marker string
}

func (s *stallingReader) ReadChunk(ctx context.Context, b *bootstrap.Bootstrap, idx uint32) ([]byte, error) {
	if idx == s.stall {
		os.WriteFile(s.marker, nil, 0o600)
		select {}
	}
	return s.Fetcher.ReadChunk(ctx, b, idx)
}

// handoverEntries is the image of the handover tests.
func handoverEntries() []fetchtest.Entry {
	entries := []fetchtest.Entry{
		{Path: "/", Mode: bootstrap.ModeDir | 0o755},
		{Path: "/big", Mode: bootstrap.ModeRegular | 0o644, Data: fixture.Text(1, 80*chunkSize+17)},
		// Large, so that in image mode it is laid out apart from the
		// small files, where no read ahead of them reaches it.
		{Path: stallFile, Mode: bootstrap.ModeRegular | 0o644, Data: fixture.Text(2, erofs.SmallFile+3000)},
		{Path: "/link", Mode: bootstrap.ModeSymlink | 0o777, Target: "big"},
		{Path: "/big2", Mode: bootstrap.ModeRegular | 0o644, Data: fixture.Text(3, 70*chunkSize+5)},
	}
	for i := range 50 {
		entries = append(entries, fetchtest.Entry{Path: fmt.Sprintf("/d/f%02d", i), Mode: bootstrap.ModeRegular | 0o644, Data: fixture.Text(uint64(10+i), 100+i), Pack: true})
	}
	return entries
}

// oldServer is the first server of a handover test, in another process.
type oldServer struct {
	mp       string
	img      *fetchtest.Image
	st       *dir.Dir
	dev      *os.File
	settings []byte
	stalled  string
	stderr   bytes.Buffer
	cmd      *exec.Cmd
	done     chan struct{}
}

// startOldServer runs the first server of a handover test and takes its
// FUSE device and settings.
func startOldServer(t *testing.T, entries []fetchtest.Entry, env ...string) *oldServer {
	t.Helper()
	requireFUSE(t)
	if os.Geteuid() != 0 {
		t.Skip("the connection can only be handed over for mounts root made itself")
	}
	img, err := fetchtest.Build(entries, fetchtest.Options{ChunkSize: chunkSize, Compression: bootstrap.Zstd})
	if err != nil {
		t.Fatal(err)
	}
	o := &oldServer{img: img, mp: filepath.Join(t.TempDir(), "mnt"), done: make(chan struct{})}
	boot, storeDir, sock, stalled := oldServerFiles(o.mp)
	o.stalled = stalled
	blob, err := bootstrap.Encode(img.Bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{o.mp, storeDir, filepath.Join(filepath.Dir(o.mp), "image")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(boot, blob, 0o600); err != nil {
		t.Fatal(err)
	}
	if o.st, err = dir.New(storeDir); err != nil {
		t.Fatal(err)
	}
	if err := img.Upload(context.Background(), o.st); err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	o.cmd = exec.Command(os.Args[0])
	o.cmd.Env = append(append(os.Environ(), oldServerEnv+"="+o.mp), env...)
	o.cmd.Stderr = &o.stderr
	if err := o.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		o.cmd.Wait()
		close(o.done)
	}()
	t.Cleanup(func() {
		o.kill()
		unix.Unmount(o.mp, unix.MNT_DETACH)
		unix.Unmount(filepath.Join(filepath.Dir(o.mp), "image"), unix.MNT_DETACH)
	})
	go func() {
		<-o.done
		l.Close() // an old server that failed fails the accept at once
	}()
	l.SetDeadline(time.Now().Add(30 * time.Second))
	conn, err := l.AcceptUnix()
	if err != nil {
		t.Fatalf("old server did not hand over (%v): %s", err, o.stderr.String())
	}
	settings := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := conn.ReadMsgUnix(settings, oob)
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	o.settings = settings[:n]
	o.dev = receivedFile(t, oob[:oobn])
	return o
}

// kill ends the old server without warning and waits until it is gone.
func (o *oldServer) kill() {
	o.cmd.Process.Kill()
	<-o.done
}

// resume serves the old server's mount from this process.
func (o *oldServer) resume(t *testing.T) *Server {
	t.Helper()
	f, opts, err := handoverFetcher(o.mp, o.img.Bootstrap, o.st)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Resume(context.Background(), o.mp, o.dev, o.settings, o.img.Bootstrap, f, opts)
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// TestHandover: a mount served by one process is taken over by another
// after the first dies (SIGKILL) in the middle of a read. Files and
// directories opened before go on reading, names looked up before and
// new ones resolve, and the read the dead server took is answered by the
// new one with the right bytes.
func TestHandover(t *testing.T) { testHandover(t) }

// TestHandoverImage is TestHandover for an image-mode mount: the EROFS
// mount stays, and the image file behind it changes servers.
func TestHandoverImage(t *testing.T) {
	t.Setenv(imageEnv, "1")
	testHandover(t)
}

func testHandover(t *testing.T) {
	entries := handoverEntries()
	o := startOldServer(t, entries)
	mp := o.mp

	// Through the old server: open files and a directory, look names up.
	want := map[string][]byte{}
	for _, e := range entries {
		want[e.Path] = e.Data
	}
	bigF, err := os.Open(filepath.Join(mp, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer bigF.Close()
	head := make([]byte, 3*chunkSize)
	if _, err := io.ReadFull(bigF, head); err != nil || !bytes.Equal(head, want["/big"][:len(head)]) {
		t.Fatalf("read /big through the old server: %v", err)
	}
	dirF, err := os.Open(filepath.Join(mp, "d"))
	if err != nil {
		t.Fatal(err)
	}
	defer dirF.Close()
	// A small buffer takes a few entries per call, so the listing goes
	// on through the new server.
	names := readDirents(t, dirF, 3)
	if len(names) == 0 || len(names) >= 52 {
		t.Fatalf("readdir through the old server: %v", names)
	}
	for _, p := range []string{"/d/f00", "/d/f01"} {
		if got, err := os.ReadFile(filepath.Join(mp, p)); err != nil || !bytes.Equal(got, want[p]) {
			t.Fatalf("read %s through the old server: %v", p, err)
		}
	}
	type result struct {
		data []byte
		err  error
	}
	stalledRead := make(chan result, 1)
	go func() {
		data, err := os.ReadFile(filepath.Join(mp, stallFile))
		stalledRead <- result{data, err}
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(o.stalled); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the old server never got the read of %s: %s", stallFile, o.stderr.String())
		}
	}

	// The old server dies holding the read; the new one takes over.
	o.kill()
	srv := o.resume(t)
	defer func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		srv.Wait()
	}()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-stalledRead:
		if res.err != nil || !bytes.Equal(res.data, want[stallFile]) {
			t.Fatalf("the read held by the dead server: %d bytes, %v", len(res.data), res.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the read held by the dead server was never answered")
	}
	rest, err := io.ReadAll(bigF)
	if err != nil || !bytes.Equal(append(head, rest...), want["/big"]) {
		t.Fatalf("read on through a handle opened before: %d bytes, %v", len(head)+len(rest), err)
	}
	bigF.Close()
	names = append(names, readDirents(t, dirF, -1)...)
	names = slices.DeleteFunc(names, func(n string) bool { return n == "." || n == ".." })
	if len(names) != 50 || names[0] != "f00" || names[49] != "f49" {
		t.Fatalf("readdir on through a handle opened before: %v", names)
	}
	dirF.Close()
	if target, err := os.Readlink(filepath.Join(mp, "link")); err != nil || target != "big" {
		t.Fatalf("readlink: %q, %v", target, err)
	}
	for _, e := range entries {
		if e.Mode&bootstrap.ModeType != bootstrap.ModeRegular {
			continue
		}
		got, err := os.ReadFile(filepath.Join(mp, e.Path))
		if err != nil || !bytes.Equal(got, e.Data) {
			t.Fatalf("read %s after the handover: %d bytes, %v", e.Path, len(got), err)
		}
	}
	if _, err := os.Stat(filepath.Join(mp, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat of a missing name: %v", err)
	}
}

// TestHandoverPassthrough: a file the kernel reads by passthrough, open
// while the mount changes hands, can be opened again through the new
// server: the kernel fails an open whose mode or backing file differs
// from the opens before it, so the new server must reuse the old one's.
func TestHandoverPassthrough(t *testing.T) {
	entries := handoverEntries()
	t.Setenv(passthroughEnv, "1")
	o := startOldServer(t, entries)
	p := filepath.Join(o.mp, "big")
	first, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	o.kill()
	srv := o.resume(t)
	defer func() {
		srv.Unmount()
		srv.Wait()
	}()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"big", "big"} {
		got, err := os.ReadFile(filepath.Join(o.mp, f))
		if err != nil || !bytes.Equal(got, entries[1].Data) {
			t.Fatalf("open %s beside a passthrough open from before the handover: %d bytes, %v", f, len(got), err)
		}
	}
	if got, err := io.ReadAll(first); err != nil || !bytes.Equal(got, entries[1].Data) {
		t.Fatalf("read through the passthrough handle from before: %d bytes, %v", len(got), err)
	}
	first.Close()
}

// TestHandoverUnansweredOpen: the server of a mount dies in the middle of
// a passthrough open, which the kernel then sends its successor again.
// However far the open got, the files read back, and an open the old
// server counted and recorded is counted once: once the files are closed
// no backing file it registered is left with the kernel, which would hold
// it (and the cache file behind it) until the mount goes. One registered
// and not yet recorded is left (leaks): no record names it, and
// unregistering ids no record names could take one a live old server
// still hands out.
func TestHandoverUnansweredOpen(t *testing.T) {
	for _, tt := range []struct {
		how   string
		leaks int
	}{{"registered", 1}, {"counted", 0}} {
		how := tt.how
		t.Run(how, func(t *testing.T) {
			entries := handoverEntries()
			bigData := entries[1].Data
			t.Setenv(passthroughEnv, "1")
			o := startOldServer(t, entries, stallOpenEnv+"="+how)
			big := filepath.Join(o.mp, "big")
			type result struct {
				f   *os.File
				err error
			}
			opened := make(chan result, 1)
			go func() {
				f, err := os.Open(big)
				opened <- result{f, err}
			}()
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				if _, err := os.Stat(o.stalled); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the old server never stalled the open: %s", o.stderr.String())
				}
			}
			o.kill()
			srv := o.resume(t)
			defer func() {
				srv.Unmount()
				srv.Wait()
			}()
			if err := srv.Start(); err != nil {
				t.Fatal(err)
			}
			var first *os.File
			select {
			case res := <-opened:
				if res.err != nil {
					t.Fatalf("the open the old server left: %v", res.err)
				}
				first = res.f
			case <-time.After(30 * time.Second):
				t.Fatal("the open the old server left was never answered")
			}
			defer first.Close()

			// The successor registers a file of its own while /big is open.
			big2, _ := o.img.Bootstrap.LookupPath("/big2")
			openedByPassthrough(t, srv.resumed, filepath.Join(o.mp, "big2"), big2)
			if got, err := os.ReadFile(big); err != nil || !bytes.Equal(got, bigData) {
				t.Fatalf("open /big beside the one the old server left: %d bytes, %v", len(got), err)
			}
			if got, err := io.ReadAll(first); err != nil || !bytes.Equal(got, bigData) {
				t.Fatalf("read through the open the old server left: %d bytes, %v", len(got), err)
			}
			first.Close()
			if recs := waitReleased(srv.resumed); len(recs) != 0 {
				t.Errorf("open files recorded after the last was closed: %+v", recs)
			}
			boot, _, _, _ := oldServerFiles(o.mp)
			if ids := registeredBackingIDs(t, srv, boot); len(ids) != tt.leaks {
				t.Errorf("backing files registered with no file open: ids %v, want %d", ids, tt.leaks)
			}
		})
	}
}

// openedByPassthrough reads p, inode ino of fsys's mount, until an open
// of it is served by passthrough: a new server checks a cache file in the
// background before it backs an open.
func openedByPassthrough(t *testing.T, fsys *fileSystem, p string, ino uint32) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fsys.file(ino)
		st.mu.Lock()
		registered := st.backingID != 0
		st.mu.Unlock()
		_, err = io.Copy(io.Discard, f)
		f.Close()
		if err != nil {
			t.Fatalf("read %s: %v", p, err)
		}
		if registered {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never opened by passthrough", p)
		}
	}
}

// waitReleased waits a while for fsys to hear that every file is closed
// (the kernel releases a file after close returns) and returns the
// records of the files still open.
func waitReleased(fsys *fileSystem) []openRecord {
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		fsys.stateMu.Lock()
		recs := make([]openRecord, 0, len(fsys.opens))
		for _, r := range fsys.opens {
			recs = append(recs, r)
		}
		fsys.stateMu.Unlock()
		if len(recs) == 0 || time.Now().After(deadline) {
			return recs
		}
	}
}

// registeredBackingIDs returns the backing files registered with the
// connection of srv, which nothing may use, and unregisters them. The
// kernel numbers registrations upwards from 1, so registering a file,
// probe, tells how far to look.
func registeredBackingIDs(t *testing.T, srv *Server, probe string) []int32 {
	t.Helper()
	f, err := os.Open(probe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	top, errno := srv.server.RegisterBackingFd(&fuse.BackingMap{Fd: int32(f.Fd())})
	if errno != 0 {
		t.Fatalf("register %s: %v", probe, errno)
	}
	var ids []int32
	for id := int32(1); id < top; id++ {
		if srv.server.UnregisterBackingFd(id) == 0 {
			ids = append(ids, id)
		}
	}
	if errno := srv.server.UnregisterBackingFd(top); errno != 0 {
		t.Fatalf("unregister %s: %v", probe, errno)
	}
	return ids
}

// readDirents lists up to calls getdents(2) calls' worth of f with a
// buffer of a few entries (all of it for calls < 0), names in order.
func readDirents(t *testing.T, f *os.File, calls int) []string {
	t.Helper()
	var names []string
	buf := make([]byte, 96)
	for i := 0; calls < 0 || i < calls; i++ {
		n, err := unix.Getdents(int(f.Fd()), buf)
		if err != nil {
			t.Fatalf("getdents: %v", err)
		}
		if n == 0 {
			break
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
	return names
}

func receivedFile(t *testing.T, oob []byte) *os.File {
	t.Helper()
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control messages: %v %v", msgs, err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("passed descriptors: %v %v", fds, err)
	}
	return os.NewFile(uintptr(fds[0]), "/dev/fuse")
}

func TestResumeRejectsBadSettings(t *testing.T) {
	img, err := fetchtest.Build([]fetchtest.Entry{{Path: "/", Mode: bootstrap.ModeDir | 0o755}}, fetchtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name     string
		settings []byte
		want     string
	}{
		{"empty", nil, "connection settings of 0 bytes"},
		{"short", make([]byte, 40), "connection settings of 40 bytes"},
		{"not FUSE 7", make([]byte, 104), "replay INIT"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dev, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			_, err = Resume(context.Background(), t.TempDir(), dev, tt.settings, img.Bootstrap, nil, Options{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestOpensCountedOnce: an open or release the kernel sends again, after
// the server that counted it died before answering, counts once; the
// opens of a server from before handles named their opens are counted out
// by their handles too.
func TestOpensCountedOnce(t *testing.T) {
	img, err := fetchtest.Build([]fetchtest.Entry{
		{Path: "/big", Mode: bootstrap.ModeRegular | 0o644, Data: fixture.Text(1, PassthroughMinSize)},
	}, fetchtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	big := mustLookup(t, img.Bootstrap, "/big")
	state := filepath.Join(t.TempDir(), "opens")
	if err := os.WriteFile(state, []byte(fmt.Sprintf(`[{"ino":%d,"cached":1}]`, big)), 0o600); err != nil {
		t.Fatal(err)
	}
	// Without a disk cache, every open is a cached one.
	fsys := newFileSystem(img.Bootstrap, &fetch.Fetcher{}, Options{Passthrough: true, OpenState: state}.withDefaults())
	if err := fsys.loadOpens(); err != nil {
		t.Fatal(err)
	}
	open := func(unique uint64) uint64 {
		t.Helper()
		var out fuse.OpenOut
		if st := fsys.Open(nil, &fuse.OpenIn{InHeader: fuse.InHeader{Unique: unique, NodeId: inoOf(big)}}, &out); !st.Ok() {
			t.Fatalf("open: %v", st)
		}
		return out.Fh
	}
	release := func(fh uint64) {
		fsys.Release(nil, &fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: inoOf(big)}, Fh: fh})
	}
	opens := func() int {
		st := fsys.file(big)
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.cachedOpens
	}
	fh := open(40)
	if again := open(40 | uniqueResend); again != fh || opens() != 2 {
		t.Fatalf("open sent again: handle %d, first %d; %d opens, want 2", again, fh, opens())
	}
	release(fh)
	release(fh)
	if opens() != 1 {
		t.Fatalf("released twice: %d opens, want 1", opens())
	}
	release(fhOldCached)
	release(fhOldCached)
	if opens() != 0 {
		t.Fatalf("the open from before released twice: %d opens, want 0", opens())
	}
	if data, err := os.ReadFile(state); err != nil || string(data) != "[]" {
		t.Fatalf("state file: %q, %v", data, err)
	}
}

// FuzzOpenState: whatever a state file holds, loading it either fails
// or leaves only counts that make sense for the image.
func FuzzOpenState(f *testing.F) {
	f.Add([]byte(`[{"ino":1,"backing":3,"refs":2},{"ino":2,"cached":1}]`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`[{"ino":9}]`))
	f.Add([]byte(`[{"ino":1,"refs":1}]`))
	f.Add([]byte(`[{"ino":1,"backing":3,"refs":1,"cached":1,"handles":[41,64]}]`))
	f.Add([]byte(`[{"ino":1,"cached":1,"handles":[2]}]`))
	img, err := fetchtest.Build([]fetchtest.Entry{
		{Path: "/a", Mode: bootstrap.ModeRegular | 0o644, Data: []byte("a")},
		{Path: "/b", Mode: bootstrap.ModeRegular | 0o644, Data: []byte("b")},
	}, fetchtest.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		state := filepath.Join(t.TempDir(), "opens")
		if err := os.WriteFile(state, data, 0o600); err != nil {
			t.Fatal(err)
		}
		fsys := newFileSystem(img.Bootstrap, &fetch.Fetcher{}, Options{Passthrough: true, OpenState: state}.withDefaults())
		if fsys.stateFile == "" {
			t.Fatal("passthrough mount without a state file")
		}
		if err := fsys.loadOpens(); err != nil {
			return
		}
		for ino, r := range fsys.opens {
			st := fsys.file(ino)
			if int(ino) >= len(img.Bootstrap.Inodes) || st.cachedOpens < 0 || st.backingRefs < 0 || (st.backingRefs > 0) != (st.backingID != 0) || r.Ino != ino ||
				st.named(false) > st.cachedOpens || st.named(true) > st.backingRefs {
				t.Fatalf("loaded %+v as %+v", r, st)
			}
		}
	})
}
