package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Subjects of peer-to-peer distribution. They are core NATS subjects, not
// JetStream: announcements are soft state that is re-sent and expires,
// and requests want an answer now or never.
const (
	// SubjectPeerAnnounce carries skiffv1.PeerAnnounce from every peer
	// and seeder to every scheduler.
	SubjectPeerAnnounce = "skiff.p2p.announce"
	// SubjectParents carries skiffv1.ParentsRequest to one scheduler of
	// QueueSchedulers, which answers skiffv1.ParentsReply.
	SubjectParents = "skiff.p2p.parents"
	// SubjectPeerReport carries skiffv1.PeerReport to every scheduler.
	SubjectPeerReport = "skiff.p2p.report"
	// SubjectParentChosen carries skiffv1.ParentChosen from every
	// scheduler to every other.
	SubjectParentChosen = "skiff.p2p.chosen"
	// QueueSchedulers is the queue group schedulers answer parent
	// requests in, so any number of them can run.
	QueueSchedulers = "skiff-scheduler"
	// ConsumerSeeder is the durable consumer of conversion.completed
	// events that seeders share, so each image is preheated by one.
	ConsumerSeeder = "seeder"
)

// SubjectSeed is where seeder id answers skiffv1.SeedRequest with
// skiffv1.SeedReply.
func SubjectSeed(id string) string { return "skiff.p2p.seed." + id }

// Send publishes m on a core NATS subject with its type and the trace
// context of ctx in the headers.
func Send(ctx context.Context, nc *nats.Conn, subject string, m proto.Message) error {
	msg, err := newMsg(ctx, subject, m)
	if err != nil {
		return fmt.Errorf("send %s: %w", subject, err)
	}
	if err := nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("send %s: %w", subject, err)
	}
	return nil
}

// Request sends req on subject and decodes the answer into reply. ctx
// bounds the wait.
func Request(ctx context.Context, nc *nats.Conn, subject string, req, reply proto.Message) error {
	msg, err := newMsg(ctx, subject, req)
	if err != nil {
		return fmt.Errorf("request %s: %w", subject, err)
	}
	resp, err := nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		return fmt.Errorf("request %s: %w", subject, err)
	}
	if _, err := DecodeMsg(ctx, resp, reply); err != nil {
		return fmt.Errorf("request %s: %w", subject, err)
	}
	return nil
}

// Respond answers a request message with m.
func Respond(ctx context.Context, req *nats.Msg, m proto.Message) error {
	if req.Reply == "" {
		return errors.New("respond: message has no reply subject")
	}
	msg, err := newMsg(ctx, req.Reply, m)
	if err != nil {
		return fmt.Errorf("respond on %s: %w", req.Subject, err)
	}
	if err := req.RespondMsg(msg); err != nil {
		return fmt.Errorf("respond on %s: %w", req.Subject, err)
	}
	return nil
}

// DecodeMsg is Decode for core NATS messages.
func DecodeMsg(ctx context.Context, msg *nats.Msg, m proto.Message) (context.Context, error) {
	return decode(ctx, msg.Subject, msg.Header, msg.Data, m)
}

// SeederConsumer creates or updates the durable consumer seeders share
// over conversion.completed events, so each image is preheated by one
// seeder. Only conversions after its creation are delivered: a seeder
// cluster starting next to a week-old stream does not pull every image
// ever converted. A preheat not acked within ackWait goes to another
// seeder.
func (b *Bus) SeederConsumer(ctx context.Context, ackWait time.Duration) (jetstream.Consumer, error) {
	c, err := b.js.CreateOrUpdateConsumer(ctx, StreamConversions, jetstream.ConsumerConfig{
		Durable:       ConsumerSeeder,
		Description:   "skiff seeders preheating converted images",
		FilterSubject: SubjectCompleted,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    5,
		DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("set up consumer %s: %w", ConsumerSeeder, err)
	}
	return c, nil
}
