package service

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/piece"
	"github.com/skiff-dev/skiff/pkg/store"
	dirstore "github.com/skiff-dev/skiff/pkg/store/dir"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// gatedStore is an empty store whose Gets of key wait for their context
// to end, reporting on started that one began.
type gatedStore struct {
	store.Store
	key     string
	started chan struct{}
}

func newGatedStore(t *testing.T, key string) *gatedStore {
	dir, err := dirstore.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &gatedStore{Store: dir, key: key, started: make(chan struct{}, 16)}
}

func (s *gatedStore) Get(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	if key != s.key {
		return s.Store.Get(ctx, key, off, length)
	}
	s.started <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

// fakeMsg is a JetStream delivery recording how it was settled; every
// settling fails with settleErr.
type fakeMsg struct {
	jetstream.Msg
	data      []byte
	header    nats.Header
	delivered uint64
	settleErr error

	mu      sync.Mutex
	settled []string
}

func newFakeMsg(t *testing.T, m proto.Message, delivered uint64) *fakeMsg {
	data, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	h := nats.Header{}
	h.Set(bus.HeaderType, string(m.ProtoReflect().Descriptor().FullName()))
	return &fakeMsg{data: data, header: h, delivered: delivered, settleErr: errors.New("nats: connection closed")}
}

func (m *fakeMsg) Data() []byte         { return m.data }
func (m *fakeMsg) Headers() nats.Header { return m.header }
func (m *fakeMsg) Subject() string      { return bus.SubjectCompleted }
func (m *fakeMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{NumDelivered: m.delivered}, nil
}
func (m *fakeMsg) Ack() error                          { return m.settle("ack") }
func (m *fakeMsg) Nak() error                          { return m.settle("nak") }
func (m *fakeMsg) NakWithDelay(time.Duration) error    { return m.settle("nak with delay") }
func (m *fakeMsg) Term() error                         { return m.settle("term") }
func (m *fakeMsg) InProgress() error                   { return nil }
func (m *fakeMsg) DoubleAck(ctx context.Context) error { return m.settle("ack") }
func (m *fakeMsg) TermWithReason(reason string) error  { return m.settle("term") }
func (m *fakeMsg) settle(how string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.settled = append(m.settled, how)
	return m.settleErr
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestHandleCompleted(t *testing.T) {
	digest := bootstrap.Sum([]byte("bootstrap"))
	event := &skiffv1.ConversionCompleted{Target: "r/app:v1-skiff", BootstrapDigest: digest.String()}
	tests := []struct {
		name      string
		msg       proto.Message
		delivered uint64
		stop      bool // the seeder stops during the preheat
		settled   string
		failures  int64
	}{
		{name: "undecodable", msg: &skiffv1.SeedRequest{}, delivered: 1, settled: "term"},
		{name: "no bootstrap digest", msg: &skiffv1.ConversionCompleted{Target: "r/app:v1-skiff"}, delivered: 1, settled: "term"},
		{name: "failure with attempts left", msg: event, delivered: 1, settled: "nak with delay", failures: 1},
		{name: "failure at the last attempt", msg: event, delivered: maxPreheatAttempts, settled: "term", failures: 1},
		// A rolling restart: the event goes to another seeder, and
		// nothing failed.
		{name: "stopping", msg: event, delivered: 1, stop: true, settled: "nak"},
		{name: "stopping at the last attempt", msg: event, delivered: maxPreheatAttempts, stop: true, settled: "nak"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The bootstrap is not in the store: a preheat fails at
			// once, unless the store holds it up until the stop.
			gateKey := "none"
			if tt.stop {
				gateKey = store.BootstrapKey(digest.Hex())
			}
			st := newGatedStore(t, gateKey)
			pieces, err := piece.Open(t.TempDir(), 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			var logs syncBuffer
			s := New(Deps{ID: "seeder-1", Advertise: "127.0.0.1:1", Store: st, Pieces: pieces},
				WithAckWait(time.Hour), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			if tt.stop {
				go func() {
					<-st.started
					stop()
				}()
			}
			msg := newFakeMsg(t, tt.msg, tt.delivered)
			s.handleCompleted(ctx, msg)
			if got := strings.Join(msg.settled, ", "); got != tt.settled {
				t.Errorf("settled with %q, want %q", got, tt.settled)
			}
			if got := s.stats().PreheatFailures; got != tt.failures {
				t.Errorf("%d preheat failures counted, want %d", got, tt.failures)
			}
			if !strings.Contains(logs.String(), "settle message") || !strings.Contains(logs.String(), "connection closed") {
				t.Errorf("failed %s not logged:\n%s", tt.settled, logs.String())
			}
		})
	}
}

// TestServeSeedRequests checks that a long seed request holds up no other
// and that stopping cuts it short with an answer.
func TestServeSeedRequests(t *testing.T) {
	n := testenv.StartNATS(t, testenv.NATSOptions{})
	nc, err := bus.Connect(n.URL, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	slow := bootstrap.Sum([]byte("slow image"))
	st := newGatedStore(t, store.BootstrapKey(slow.Hex()))
	pieces, err := piece.Open(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := New(Deps{ID: "seeder-1", Advertise: "127.0.0.1:1", Store: st, Pieces: pieces, NATS: nc}, WithConcurrency(2))
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	served := make(chan error, 1)
	go func() { served <- s.ServeSeedRequests(ctx) }()

	request := func(req *skiffv1.SeedRequest) (*skiffv1.SeedReply, error) {
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var reply skiffv1.SeedReply
		err := bus.Request(rctx, nc, bus.SubjectSeed("seeder-1"), req, &reply)
		return &reply, err
	}
	// A range of a blob the store lacks: answered at once, with an error.
	quick := &skiffv1.SeedRequest{Blob: make([]byte, 32), Offset: 0, Size: 10}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := request(quick)
		if err == nil {
			break
		}
		if !errors.Is(err, nats.ErrNoResponders) || time.Now().After(deadline) {
			t.Fatalf("first request: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	slowReply := make(chan *skiffv1.SeedReply, 1)
	go func() {
		reply, err := request(&skiffv1.SeedRequest{BootstrapDigest: slow.String()})
		if err != nil {
			t.Errorf("slow request: %v", err)
		}
		slowReply <- reply
	}()
	<-st.started
	reply, err := request(quick)
	if err != nil {
		t.Fatalf("request while a preheat is in progress: %v", err)
	}
	if !strings.Contains(reply.GetError(), "not found") {
		t.Errorf("seeding a range of an unknown blob: %+v", reply)
	}

	stop()
	select {
	case reply := <-slowReply:
		if !strings.Contains(reply.GetError(), "stopping") {
			t.Errorf("preheat cut short by a stop answered %+v", reply)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("preheat in progress not answered after a stop")
	}
	if err := <-served; err != nil {
		t.Errorf("ServeSeedRequests after a stop: %v", err)
	}
}
