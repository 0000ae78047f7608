package lazyfs

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// A FUSE connection outlives the process serving it as long as some
// process holds its device descriptor: requests then wait in the kernel
// for a server. That is how a mount changes hands without its users
// noticing (an upgrade of the mount process): the old process passes the
// descriptor and the settings the kernel negotiated at INIT to the new
// one, which serves the connection from where it is. The kernel sends
// INIT once per connection, so the new server is brought up on a socket
// fed the original INIT request, and the device is put in the socket's
// place before the first real request is read. Nothing else needs to
// travel: node IDs and handles mean the same to every server of an image
// (see fileSystem).

// opInit is FUSE_INIT's opcode.
const opInit = 26

// notifyResend is FUSE_NOTIFY_RESEND (Linux 6.9): the kernel queues again
// every request a server read but did not answer.
const notifyResend = 7

// Handover returns what another process needs to serve this mount in
// this one's place (see Resume): the FUSE device, which stays open in
// this process, and the connection's settings. This process may go on
// serving until it exits; requests it read and did not answer by then
// are sent again when the new server calls Resend.
func (m *Server) Handover() (*os.File, []byte, error) {
	if m.dev == nil {
		return nil, nil, fmt.Errorf("hand over %s: mounted by fusermount, which keeps the FUSE device", m.mountpoint)
	}
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.NativeEndian, m.server.KernelSettings()); err != nil {
		return nil, nil, fmt.Errorf("hand over %s: %w", m.mountpoint, err)
	}
	return m.dev, buf.Bytes(), nil
}

// Resume prepares to serve the FUSE connection dev, mounted at mountpoint
// and with the settings from Handover, for image b, in place of the
// process that mounted it; serving starts with Start, once that process
// has stopped. dev belongs to the returned Server. A mount that used
// passthrough must be resumed with it and the same Options.OpenState: the
// kernel fails an open that conflicts with how the file is open already.
func Resume(ctx context.Context, mountpoint string, dev *os.File, settings []byte, b *bootstrap.Bootstrap, r ChunkReader, opts Options) (*Server, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("resume %s: %w", mountpoint, err)
	}
	if len(b.Inodes) == 0 || !b.Inodes[bootstrap.RootInode].IsDir() {
		return nil, fmt.Errorf("resume %s: bootstrap has no root directory", mountpoint)
	}
	var init fuse.InitIn
	if len(settings) != int(unsafe.Sizeof(init)) {
		return nil, fmt.Errorf("resume %s: connection settings of %d bytes, want %d", mountpoint, len(settings), unsafe.Sizeof(init))
	}
	if err := binary.Read(bytes.NewReader(settings), binary.NativeEndian, &init); err != nil {
		return nil, fmt.Errorf("resume %s: %w", mountpoint, err)
	}
	init.Length, init.Opcode, init.Unique, init.NodeId = uint32(len(settings)), opInit, 1, 0
	opts = opts.withDefaults()
	fsys, raw, err := newServed(b, r, opts)
	if err != nil {
		return nil, fmt.Errorf("resume %s: %w", mountpoint, err)
	}
	// The kernel keeps what it negotiated with the old server; go-fuse's
	// answer to the replayed INIT only sets go-fuse's own view of it,
	// which the same kernel request and options make the same.
	mo := mountOptions(opts, fsys.backing != nil)
	server, err := serveResumed(raw, dev, &init, &mo)
	if err != nil {
		return nil, fmt.Errorf("resume %s: %w", mountpoint, err)
	}
	close(fsys.ready)
	s := &Server{mountpoint: mountpoint, server: server, dev: dev, resumed: fsys}
	if opts.Image != nil {
		s.imageDir = opts.ImageDir
	}
	return s, nil
}

// serveResumed brings a go-fuse server up on a socket that hands it init,
// then swaps the socket for dev.
func serveResumed(raw fuse.RawFileSystem, dev *os.File, init *fuse.InitIn, mo *fuse.MountOptions) (*fuse.Server, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	ours, theirs := fds[0], fds[1]
	defer unix.Close(ours)
	var req bytes.Buffer
	if err := binary.Write(&req, binary.NativeEndian, init); err != nil {
		unix.Close(theirs)
		return nil, err
	}
	if _, err := unix.Write(ours, req.Bytes()); err != nil {
		unix.Close(theirs)
		return nil, fmt.Errorf("replay INIT: %w", err)
	}
	// go-fuse owns theirs from here: it closes it itself when NewServer
	// fails, and after that through the file it wraps it in.
	server, err := fuse.NewServer(raw, "/dev/fd/"+strconv.Itoa(theirs), mo)
	if err != nil {
		return nil, fmt.Errorf("replay INIT: %w", err)
	}
	reply := make([]byte, 4096)
	n, err := unix.Read(ours, reply)
	if err != nil {
		return nil, fmt.Errorf("replay INIT: reply: %w", err)
	}
	var hdr fuse.OutHeader
	if n < int(unsafe.Sizeof(hdr)) {
		return nil, fmt.Errorf("replay INIT: reply of %d bytes", n)
	}
	if err := binary.Read(bytes.NewReader(reply[:n]), binary.NativeEndian, &hdr); err != nil {
		return nil, fmt.Errorf("replay INIT: reply: %w", err)
	}
	if hdr.Status != 0 {
		return nil, fmt.Errorf("replay INIT: %v", fuse.Status(-hdr.Status))
	}
	// Nothing reads theirs until Serve: the device takes its number.
	if err := unix.Dup3(int(dev.Fd()), theirs, unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("take over FUSE device: %w", err)
	}
	return server, nil
}

// Start serves a resumed mount. It must come after the previous server
// has stopped reading (exited): the kernel is asked to send this one
// every request that server read and did not answer. That needs Linux
// 6.9; before it, Start still serves and returns an error saying those
// requests wait until the mount goes.
func (m *Server) Start() error {
	if m.resumed == nil || m.started {
		return errors.New("start: not a resumed mount, or started already")
	}
	m.started = true
	// The records are complete now that the previous server is gone.
	var errs []error
	if m.resumed.stateFile != "" {
		if err := m.resumed.loadOpens(); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("start %s: open files: %w", m.mountpoint, err))
		}
	}
	go m.server.Serve()
	hdr := fuse.OutHeader{Length: uint32(unsafe.Sizeof(fuse.OutHeader{})), Status: notifyResend}
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.NativeEndian, hdr); err != nil {
		return err
	}
	if _, err := m.dev.Write(buf.Bytes()); err != nil {
		errs = append(errs, fmt.Errorf("start %s: ask the kernel to resend what the previous server did not answer: %w", m.mountpoint, err))
	}
	return errors.Join(errs...)
}
