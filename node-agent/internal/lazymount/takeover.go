package lazymount

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The handover runs on the mount process' own socket, as an HTTP upgrade
// to a small protocol, because FUSE devices can only travel as unix
// socket rights:
//
//	new → old  POST /handover (Upgrade: skiff-handover)
//	old → new  101 Switching Protocols, then a 4-byte length and the JSON
//	           list of mounts
//	new → old  'R': ready for the devices (nothing else may be buffered
//	           when rights arrive, or the kernel drops them)
//	old → new  one byte per batch of devices, with the devices as rights
//	new → old  'A': the new process serves them from now on
//
// after which the old process exits; its end of the connection closing
// tells the new one that it has stopped reading from the devices. Without
// the 'A', the old process keeps its mounts.
const (
	upgradeProto = "skiff-handover"
	readyByte    = 'R'
	ackByte      = 'A'
	// maxRights is how many descriptors go in one message (the kernel
	// takes at most 253).
	maxRights = 200
	// maxHandoverJSON bounds the list of mounts.
	maxHandoverJSON = 16 << 20
	// handoverTimeout bounds each step of the exchange.
	handoverTimeout = 30 * time.Second
)

// ackTimeout bounds the successor's resuming of the mounts (a variable
// for tests).
var ackTimeout = 2 * time.Minute

// mountSource is what hands mounts over: a Manager, or the devices an
// agent kept of a mount process that died (see ServeHeld).
type mountSource interface {
	Handover() ([]HandedMount, error)
	EndHandover(done bool)
}

// serveHandover answers POST /handover. handedOver is called once the
// successor has the mounts, with the connection, which must stay open
// until this process stops reading the FUSE devices.
func serveHandover(source func() mountSource, log *slog.Logger, handedOver func(net.Conn)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != upgradeProto {
			http.Error(w, "handover needs Upgrade: "+upgradeProto, http.StatusBadRequest)
			return
		}
		if handedOver == nil {
			http.Error(w, "this mount process does not hand over its mounts", http.StatusNotImplemented)
			return
		}
		hj, ok := w.(http.Hijacker)
		if !ok {
			http.Error(w, "connection cannot be taken over", http.StatusInternalServerError)
			return
		}
		m := source()
		hs, err := m.Handover()
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		conn, _, err := hj.Hijack()
		if err != nil {
			m.EndHandover(false)
			log.Warn("lazymount: handover", "err", err)
			return
		}
		if err := sendMounts(conn, hs); err != nil {
			m.EndHandover(false)
			conn.Close()
			log.Warn("lazymount: handover failed; keeping the mounts", "err", err)
			return
		}
		m.EndHandover(true)
		handedOver(conn)
	}
}

func sendMounts(conn net.Conn, hs []HandedMount) error {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return errors.New("handover needs a unix socket")
	}
	uc.SetDeadline(time.Now().Add(handoverTimeout))
	defer uc.SetDeadline(time.Time{})
	list, err := json.Marshal(hs)
	if err != nil {
		return err
	}
	msg := []byte("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + upgradeProto + "\r\n\r\n")
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(list)))
	if _, err := uc.Write(append(msg, list...)); err != nil {
		return fmt.Errorf("send mounts: %w", err)
	}
	if err := expectByte(uc, readyByte); err != nil {
		return err
	}
	for i := 0; i < len(hs); i += maxRights {
		var fds []int
		for _, h := range hs[i:min(i+maxRights, len(hs))] {
			fds = append(fds, int(h.Dev.Fd()))
		}
		if _, _, err := uc.WriteMsgUnix([]byte{'F'}, unix.UnixRights(fds...), nil); err != nil {
			return fmt.Errorf("send FUSE devices: %w", err)
		}
	}
	// The successor resumes every mount, loading each bootstrap, before
	// it acks: that gets a time of its own, not what the list and the
	// devices left of handoverTimeout.
	uc.SetDeadline(time.Now().Add(ackTimeout))
	return expectByte(uc, ackByte)
}

func expectByte(r io.Reader, want byte) error {
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("handover: waiting for %q: %w", want, err)
	}
	if b[0] != want {
		return fmt.Errorf("handover: got %q, want %q", b[0], want)
	}
	return nil
}

// Takeover is a handover in progress, seen from the new mount process.
type Takeover struct {
	// Mounts are the old process' mounts, each with its FUSE device.
	Mounts []HandedMount
	conn   *net.UnixConn
}

// ErrNotCommitted is returned by Commit when the old process did not take
// the ack: it gave up on the handover and serves its mounts still, so
// this process must not serve them too.
var ErrNotCommitted = errors.New("the old mount process keeps its mounts")

// ErrNoHandover is returned by TakeOver when the running mount process
// cannot hand its mounts over (a version before handovers).
var ErrNoHandover = errors.New("the running mount process cannot hand over its mounts")

// TakeOver asks the mount process listening on socket for its mounts.
// The old process keeps serving them until Commit; Abort, or this
// process dying first, leaves them with it.
func TakeOver(ctx context.Context, socket string) (*Takeover, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("take over: %w", err)
	}
	conn := c.(*net.UnixConn)
	t, err := takeOver(conn, "/handover")
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("take over: %w", err)
	}
	return t, nil
}

func takeOver(conn *net.UnixConn, path string) (*Takeover, error) {
	conn.SetDeadline(time.Now().Add(handoverTimeout))
	req := "POST " + path + " HTTP/1.1\r\nHost: mountd\r\nConnection: Upgrade\r\nUpgrade: " + upgradeProto + "\r\nContent-Length: 0\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return nil, err
	}
	// The old process sends nothing past the list until told to, so the
	// reader buffers nothing that comes with rights.
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusNotImplemented {
			return nil, ErrNoHandover
		}
		return nil, fmt.Errorf("%s: %s", resp.Status, body)
	}
	var n uint32
	if err := binary.Read(br, binary.BigEndian, &n); err != nil {
		return nil, err
	}
	if n > maxHandoverJSON {
		return nil, fmt.Errorf("list of %d bytes", n)
	}
	list := make([]byte, n)
	if _, err := io.ReadFull(br, list); err != nil {
		return nil, err
	}
	if br.Buffered() != 0 {
		return nil, errors.New("old mount process sent more than the list")
	}
	t := &Takeover{conn: conn}
	if err := json.Unmarshal(list, &t.Mounts); err != nil {
		return nil, fmt.Errorf("list of mounts: %w", err)
	}
	if _, err := conn.Write([]byte{readyByte}); err != nil {
		return nil, err
	}
	oob := make([]byte, unix.CmsgSpace(4*maxRights))
	for got := 0; got < len(t.Mounts); {
		var b [1]byte
		_, oobn, flags, _, err := conn.ReadMsgUnix(b[:], oob)
		if err != nil {
			t.closeDevs()
			return nil, fmt.Errorf("receive FUSE devices: %w", err)
		}
		fds, err := rights(oob[:oobn])
		if err == nil && flags&unix.MSG_CTRUNC != 0 {
			// The kernel dropped devices it could not install, as at
			// the open-files limit: the mounts cannot all change hands.
			err = fmt.Errorf("devices dropped in transit (MSG_CTRUNC): raise the open files limit (%d mounts)", len(t.Mounts))
		}
		if err == nil && got+len(fds) > len(t.Mounts) {
			err = fmt.Errorf("got %d devices for %d mounts", got+len(fds), len(t.Mounts))
		}
		for _, fd := range fds {
			f := os.NewFile(uintptr(fd), "/dev/fuse")
			if err != nil {
				f.Close()
				continue
			}
			t.Mounts[got].Dev = f
			got++
		}
		if err != nil {
			t.closeDevs()
			return nil, fmt.Errorf("receive FUSE devices: %w", err)
		}
	}
	return t, nil
}

func rights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for i := range msgs {
		fs, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			return nil, err
		}
		for _, fd := range fs {
			unix.CloseOnExec(fd)
		}
		fds = append(fds, fs...)
	}
	if len(fds) == 0 {
		return nil, errors.New("message without devices")
	}
	return fds, nil
}

func (t *Takeover) closeDevs() {
	for _, h := range t.Mounts {
		if h.Dev != nil {
			h.Dev.Close()
		}
	}
}

// Abort leaves the mounts with the old process, which goes on as before.
// The devices received stay open in this process; it gives up the
// takeover only to exit, which closes them.
func (t *Takeover) Abort() {
	t.conn.Close()
}

// Commit tells the old process that this one serves the mounts now, and
// waits until it has exited: only then may this one have the kernel send
// the requests the old one read and did not answer (Manager.StartResumed).
// An old process still there after grace is killed.
func (t *Takeover) Commit(ctx context.Context, grace time.Duration) error {
	defer t.conn.Close()
	t.conn.SetDeadline(time.Time{})
	pid := peerPID(t.conn)
	if _, err := t.conn.Write([]byte{ackByte}); err != nil {
		if pid > 0 && gone(pid, time.Second) {
			// It died after sending the devices: they are this
			// process' alone.
			return nil
		}
		return fmt.Errorf("commit takeover: %w: %w", ErrNotCommitted, err)
	}
	exited := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, t.conn)
		exited <- err
	}()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case err := <-exited:
		if errors.Is(err, syscall.ECONNRESET) && (pid <= 0 || !gone(pid, time.Second)) {
			// It closed with the ack unread: it gave up on the
			// handover just as the ack came, and keeps its mounts.
			return fmt.Errorf("commit takeover: %w: %w", ErrNotCommitted, err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
	}
	if pid <= 0 {
		return fmt.Errorf("commit takeover: old mount process still running after %s, and its pid is unknown", grace)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("commit takeover: kill old mount process %d: %w", pid, err)
	}
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// gone reports whether process pid has exited, waiting up to wait for
// it. A process' sockets close while it exits, before it is a zombie, and
// a zombie still answers kill(pid, 0): its state in /proc tells.
func gone(pid int, wait time.Duration) bool {
	for deadline := time.Now().Add(wait); ; time.Sleep(10 * time.Millisecond) {
		if exited(pid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// exited reports whether process pid is a zombie or no more.
func exited(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	// "pid (comm) state ...": comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	switch stat[i+2] {
	case 'Z', 'X', 'x':
		return true
	}
	return false
}

// peerPID is the process at the other end of conn, or 0.
func peerPID(conn *net.UnixConn) int {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0
	}
	pid := 0
	raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
	})
	return pid
}

// copies serves POST /devices: the mounts with copies of their FUSE
// devices, for an agent to keep (see Client.Devices). Nothing changes
// hands.
type copies struct {
	m  *Manager
	hs []HandedMount
}

func (c *copies) Handover() ([]HandedMount, error) {
	c.hs = c.m.Devices()
	return c.hs, nil
}

func (c *copies) EndHandover(bool) {
	for _, h := range c.hs {
		h.Dev.Close()
	}
}

// Devices returns every mount with a copy of its FUSE device, which keeps
// the connection alive should the mount process die: whoever holds the
// copies can hand them to a new mount process (ServeHeld).
func (c *Client) Devices(ctx context.Context) ([]HandedMount, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, fmt.Errorf("copy FUSE devices: %w", err)
	}
	defer conn.Close()
	t, err := takeOver(conn.(*net.UnixConn), "/devices")
	if err != nil {
		return nil, fmt.Errorf("copy FUSE devices: %w", err)
	}
	if _, err := conn.Write([]byte{ackByte}); err != nil {
		t.closeDevs()
		return nil, fmt.Errorf("copy FUSE devices: %w", err)
	}
	return t.Mounts, nil
}

// held are FUSE devices kept by an agent, handed to one successor.
type held struct {
	mu     sync.Mutex
	mounts []HandedMount
	busy   bool
}

func (h *held) Handover() ([]HandedMount, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.busy {
		return nil, errHandingOver
	}
	h.busy = true
	return h.mounts, nil
}

func (h *held) EndHandover(done bool) {
	h.mu.Lock()
	h.busy = done
	h.mu.Unlock()
}

// ServeHeld stands in for a mount process that died, on l: it answers
// pings, and hands mounts (the copies an agent kept, see Client.Devices)
// over to the first mount process that asks, then returns. The devices
// stay open; the caller closes them.
func ServeHeld(ctx context.Context, l net.Listener, mounts []HandedMount, log *slog.Logger) error {
	done := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, "{}\n")
	})
	// Requests for the mounts wait for the next mount process (Client
	// retries them); only it can serve them.
	for _, op := range []string{"fetch", "mount", "unmount", "release"} {
		mux.HandleFunc("POST /"+op, func(w http.ResponseWriter, r *http.Request) { replacing(w) })
	}
	h := &held{mounts: mounts}
	mux.Handle("POST /handover", serveHandover(func() mountSource { return h }, log, func(conn net.Conn) {
		// Nothing here reads the devices: the successor may go on.
		conn.Close()
		close(done)
	}))
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	defer srv.Close()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
