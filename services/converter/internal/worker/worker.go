// Package worker converts the images that conversion requests name, with
// an exactly-once effect on top of JetStream's at-least-once delivery: a
// KV record per source digest, claimed and advanced by compare-and-swap,
// decides whether a delivery converts, waits, retags or only acks, and the
// message is acked only once the Skiff manifest is pushed and the outcome
// published. The record also counts the request's conversion attempts:
// JetStream's delivery count would count the deliveries that only waited
// for another request of the same digest as well.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/conversion"
	"github.com/skiff-dev/skiff/pkg/convert"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/telemetry"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
	"github.com/skiff-dev/skiff/services/converter/internal/webhook"
)

// Converter turns a source image into a Skiff image whose blobs are stored.
type Converter interface {
	Convert(ctx context.Context, src v1.Image) (*convert.Result, error)
	// ConvertIndex converts every platform of a multi-platform source.
	ConvertIndex(ctx context.Context, index v1.Descriptor, images []image.Platform) (*convert.IndexResult, error)
	// Reuse checks that an earlier conversion's bootstrap and blobs are
	// still in the store, failing with an error wrapping
	// convert.ErrIncomplete if not (see convert.Converter.Reuse).
	Reuse(ctx context.Context, bootstrap bootstrap.Digest) error
}

// Publisher publishes outcome events.
type Publisher interface {
	Publish(ctx context.Context, subject, msgID string, m proto.Message) (*jetstream.PubAck, error)
}

// Options tune retries and name the worker.
type Options struct {
	// MaxAttempts bounds the conversion attempts of a request, and the
	// failed claims of its record in a row, before it is reported failed.
	MaxAttempts int
	AckWait     time.Duration
	Backoff     time.Duration
	BackoffMax  time.Duration
	// Registry, if set, replaces the registry host of every request for
	// pulling and pushing; events keep the name the registry reported.
	Registry string
	Name     string
	Logger   *slog.Logger
}

// Worker handles conversion requests. It is safe for concurrent use.
type Worker struct {
	pub  Publisher
	kv   jetstream.KeyValue
	conv Converter
	opts Options
	log  *slog.Logger

	claimFailures tally
	counts        counts
}

// New returns a worker recording conversions in kv.
func New(pub Publisher, kv jetstream.KeyValue, conv Converter, opts Options) *Worker {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Name == "" {
		host, _ := os.Hostname()
		opts.Name = fmt.Sprintf("%s/%d", host, os.Getpid())
	}
	// A request that failed its claim here and then went to another
	// process is forgotten after a while; its next delivery comes
	// within BackoffMax of the last failure, wherever it goes.
	ttl := max(time.Hour, 4*opts.BackoffMax)
	return &Worker{pub: pub, kv: kv, conv: conv, opts: opts, log: opts.Logger, claimFailures: tally{ttl: ttl}}
}

// job is one delivery of one request.
type job struct {
	msg     jetstream.Msg
	req     *skiffv1.ImagePushed
	key     string
	seq     uint64
	attempt int    // conversion attempts so far, this one included; set by claim
	source  string // as reported
	target  string // as reported
	log     *slog.Logger
	// retagged is set by a claim that tagged an earlier conversion of
	// the digest for this request.
	retagged bool
}

// Handle processes one delivery and always settles it: ack, nak with a
// delay, or term for a message that can never be processed.
func (w *Worker) Handle(ctx context.Context, msg jetstream.Msg) {
	j, err := w.decode(ctx, msg)
	if err != nil {
		w.log.Error("dropping undecodable conversion request", "err", err)
		w.counts.invalid.Add(1)
		settle(msg.Term())
		return
	}
	ctx, span := telemetry.Tracer("skiff/converter").Start(j.ctx, "convert "+j.source)
	span.SetAttributes(attribute.String("skiff.source", j.source), attribute.String("skiff.digest", j.req.GetDigest()))
	defer span.End()
	err = w.handle(ctx, &j.job)
	if j.attempt > 0 {
		span.SetAttributes(attribute.Int("skiff.attempt", j.attempt))
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
}

type decoded struct {
	job
	ctx context.Context
}

func (w *Worker) decode(ctx context.Context, msg jetstream.Msg) (decoded, error) {
	md, err := msg.Metadata()
	if err != nil {
		return decoded{}, err
	}
	req := &skiffv1.ImagePushed{}
	ctx, err = bus.Decode(ctx, msg, req)
	if err != nil {
		return decoded{}, err
	}
	ok, err := webhook.Validate(req)
	if err != nil {
		return decoded{}, err
	}
	if !ok {
		return decoded{}, fmt.Errorf("request for %s names no convertible tag", webhook.Source(req))
	}
	key, err := conversion.Key(req.GetDigest())
	if err != nil {
		return decoded{}, err
	}
	src := webhook.Source(req)
	return decoded{ctx: ctx, job: job{
		msg: msg, req: req, key: key, seq: md.Sequence.Stream,
		source: src, target: src + image.TagSuffix,
		log: w.log.With("image", src, "digest", req.GetDigest(), "delivery", md.NumDelivered),
	}}, nil
}

// errBusy means another request for the same digest owns the conversion.
var errBusy = errors.New("conversion owned by another request")

func (w *Worker) handle(ctx context.Context, j *job) error {
	rec, rev, err := w.claim(ctx, j)
	if err != nil && !errors.Is(err, errBusy) {
		return w.claimFailed(ctx, j, err)
	}
	w.claimFailures.forget(j.seq)
	switch {
	case errors.Is(err, errBusy):
		// Come back once the owner is likely done; then this request
		// only retags.
		w.counts.waits.Add(1)
		settle(j.msg.NakWithDelay(w.opts.Backoff))
		return nil
	case rec == nil:
		if j.retagged {
			w.counts.retagged.Add(1)
		} else {
			w.counts.duplicates.Add(1)
		}
		settle(j.msg.DoubleAck(ctx))
		return nil
	}
	j.attempt = rec.Attempts
	j.log = j.log.With("attempt", j.attempt)
	if j.attempt > w.opts.MaxAttempts {
		// The last attempt began and never ended: its worker died.
		reason := "worker stopped during the last attempt"
		if rec.Reason != "" {
			reason = rec.Reason
		}
		return w.fail(ctx, j, rec, rev, errors.New(reason), time.Time{})
	}
	start := time.Now()
	w.counts.attempts.Add(1)
	w.counts.running.Add(1)
	defer w.counts.running.Add(-1)
	kctx, stop := context.WithCancel(ctx)
	go bus.KeepAlive(kctx, j.msg, w.opts.AckWait/3)
	res, err := w.convert(ctx, j)
	stop()
	if errors.Is(err, errSkiffSource) {
		// A Skiff image pushed under a plain tag: never convert output.
		j.log.Info("ignoring push of a Skiff image")
		w.counts.skiffSources.Add(1)
		if derr := w.kv.Delete(ctx, j.key, jetstream.LastRevision(rev)); derr != nil {
			j.log.Warn("remove record", "err", derr)
		}
		settle(j.msg.DoubleAck(ctx))
		return nil
	}
	if err == nil {
		err = w.complete(ctx, j, rec, rev, res, time.Since(start))
	}
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		// Shutting down: hand the request straight to another worker.
		settle(j.msg.Nak())
		return err
	}
	w.counts.attemptErrors.Add(1)
	if j.attempt >= w.opts.MaxAttempts {
		return w.fail(ctx, j, rec, rev, err, start)
	}
	delay := w.backoff(j.attempt)
	j.log.Warn("conversion failed, will retry", "err", err, "retry_in", delay)
	rec.State, rec.Reason, rec.Updated = conversion.Pending, err.Error(), time.Now().UTC()
	if _, uerr := w.update(ctx, j.key, rec, rev); uerr != nil {
		j.log.Warn("record retry", "err", uerr)
	}
	settle(j.msg.NakWithDelay(delay))
	return err
}

// claim decides what this delivery does. It returns the record (now
// Running, owned by this request and counting this attempt) to convert,
// nil to only ack, or errBusy.
func (w *Worker) claim(ctx context.Context, j *job) (*conversion.Record, uint64, error) {
	for range 10 {
		now := time.Now().UTC()
		entry, err := w.kv.Get(ctx, j.key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			rec := &conversion.Record{
				Source: j.source, SourceDigest: j.req.GetDigest(), Target: j.target, State: conversion.Running,
				Seq: j.seq, Attempts: 1, Worker: w.opts.Name, Created: now, Updated: now,
			}
			b, err := rec.Marshal()
			if err != nil {
				return nil, 0, err
			}
			rev, err := w.kv.Create(ctx, j.key, b)
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue
			}
			if err != nil {
				return nil, 0, fmt.Errorf("create record %s: %w", j.key, err)
			}
			return rec, rev, nil
		}
		if err != nil {
			return nil, 0, fmt.Errorf("read record %s: %w", j.key, err)
		}
		rec, err := conversion.Unmarshal(entry.Value())
		if err != nil {
			return nil, 0, err
		}
		switch {
		case rec.State == conversion.Done && rec.Seq == j.seq:
			j.log.Info("already converted", "target", rec.Target, "target_digest", rec.TargetDigest)
			return nil, 0, nil
		case rec.State == conversion.Done && rec.Target == j.target:
			moved, err := w.moved(ctx, j, rec)
			if err != nil {
				return nil, 0, err
			}
			if !moved {
				j.log.Info("already converted", "target", rec.Target, "target_digest", rec.TargetDigest)
				return nil, 0, nil
			}
			// The tag was pushed with other content in between and is
			// back (a rollback): its Skiff tag names the other image.
			j.log.Info("skiff tag names another image now, tagging this conversion again", "target", rec.Target, "target_digest", rec.TargetDigest)
			fallthrough
		case rec.State == conversion.Done:
			if ok, err := w.stored(ctx, j, rec); err != nil {
				return nil, 0, err
			} else if !ok {
				// Tagging the earlier conversion would publish an
				// image whose data is gone: start over.
				rec = &conversion.Record{Source: j.source, SourceDigest: rec.SourceDigest, Target: j.target, Created: now}
				break
			}
			if err := w.retag(ctx, j, rec); err != nil {
				return nil, 0, err
			}
			j.retagged = true
			// The record follows the latest request, so whoever
			// asked sees it answered.
			rec.Target, rec.Seq, rec.Updated = j.target, j.seq, now
			if _, err := w.update(ctx, j.key, rec, entry.Revision()); isConflict(err) {
				continue
			} else if err != nil {
				return nil, 0, err
			}
			return nil, 0, nil
		case rec.State == conversion.Failed && rec.Seq == j.seq:
			return nil, 0, nil
		case rec.State == conversion.Failed:
			// A new request for an image that failed before: start over.
			rec = &conversion.Record{Source: j.source, SourceDigest: rec.SourceDigest, Target: j.target, Created: now}
		case rec.Seq != j.seq:
			return nil, 0, errBusy
		}
		// Ours: a first delivery, or a redelivery after a failure or the
		// death of the worker that held it.
		rec.State, rec.Seq, rec.Attempts, rec.Worker, rec.Updated = conversion.Running, j.seq, rec.Attempts+1, w.opts.Name, now
		rev, err := w.update(ctx, j.key, rec, entry.Revision())
		if isConflict(err) {
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		return rec, rev, nil
	}
	return nil, 0, fmt.Errorf("record %s: too many concurrent updates", j.key)
}

var errSkiffSource = errors.New("source is a Skiff image")

// ioRef is where the worker reaches repository of a reported reference.
func (w *Worker) ioRepo(reported string) (name.Repository, error) {
	ref, err := name.ParseReference(reported)
	if err != nil {
		return name.Repository{}, err
	}
	repo := ref.Context()
	if w.opts.Registry != "" {
		return name.NewRepository(w.opts.Registry + "/" + repo.RepositoryStr())
	}
	return repo, nil
}

// converted is what one conversion pushed: a Skiff image, or a Skiff
// index of one per platform.
type converted struct {
	digest    v1.Hash           // of the pushed manifest or index
	platforms []*convert.Result // one, or one per platform
}

func (w *Worker) convert(ctx context.Context, j *job) (*converted, error) {
	repo, err := w.ioRepo(j.source)
	if err != nil {
		return nil, err
	}
	index, images, err := image.LoadIndex(ctx, repo.Digest(j.req.GetDigest()).String())
	if err != nil {
		return nil, err
	}
	for _, p := range images {
		m, err := p.Image.Manifest()
		if err != nil {
			return nil, fmt.Errorf("read source manifest: %w", err)
		}
		if image.IsSkiff(m) {
			return nil, errSkiffSource
		}
	}
	// The store holds every blob and bootstrap before anything is pushed,
	// so what is pushed is never partial.
	target := repo.Tag(j.req.GetTag() + image.TagSuffix).String()
	if index == nil {
		res, err := w.conv.Convert(ctx, images[0].Image)
		if err != nil {
			return nil, err
		}
		if err := image.Write(ctx, target, res.Image); err != nil {
			return nil, err
		}
		digest, err := res.Image.Digest()
		if err != nil {
			return nil, fmt.Errorf("skiff manifest digest: %w", err)
		}
		return &converted{digest: digest, platforms: []*convert.Result{res}}, nil
	}
	res, err := w.conv.ConvertIndex(ctx, *index, images)
	if err != nil {
		return nil, err
	}
	if err := image.WriteIndex(ctx, target, res.Index); err != nil {
		return nil, err
	}
	digest, err := res.Index.Digest()
	if err != nil {
		return nil, fmt.Errorf("skiff index digest: %w", err)
	}
	c := &converted{digest: digest}
	for _, p := range res.Platforms {
		c.platforms = append(c.platforms, p.Result)
	}
	return c, nil
}

// stored reports whether the data of the conversion rec records is still
// in the store, so that it can be tagged for j: garbage collection deletes
// the bootstrap of an image no registry tags any more, and then its
// blobs, and the Skiff tag rec names may have moved on since. An error is
// a check that could not be made; the claim is retried.
func (w *Worker) stored(ctx context.Context, j *job, rec *conversion.Record) (bool, error) {
	for _, bd := range rec.Bootstraps() { // none: nothing to check by
		d, err := bootstrap.ParseDigest(bd)
		if err != nil {
			j.log.Warn("earlier conversion names an unreadable bootstrap digest, converting anew", "bootstrap", bd, "err", err)
			return false, nil
		}
		err = w.conv.Reuse(ctx, d)
		if errors.Is(err, convert.ErrIncomplete) {
			j.log.Warn("earlier conversion's data is gone from the store, converting anew instead of tagging it",
				"target_digest", rec.TargetDigest, "bootstrap", bd, "err", err)
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("check earlier conversion: %w", err)
		}
	}
	return true, nil
}

// moved reports whether j's Skiff tag, which rec's conversion was
// pushed to, names another manifest now, or none.
func (w *Worker) moved(ctx context.Context, j *job, rec *conversion.Record) (bool, error) {
	to, err := w.ioRepo(j.target)
	if err != nil {
		return false, err
	}
	d, err := image.Digest(ctx, to.Tag(j.req.GetTag()+image.TagSuffix).String())
	var terr *transport.Error
	if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("check skiff tag: %w", err)
	}
	return d.String() != rec.TargetDigest, nil
}

// retag gives an already converted image the Skiff tag of a new request
// for the same digest, without converting again.
func (w *Worker) retag(ctx context.Context, j *job, rec *conversion.Record) error {
	from, err := w.ioRepo(rec.Target)
	if err != nil {
		return err
	}
	to, err := w.ioRepo(j.target)
	if err != nil {
		return err
	}
	if err := image.Copy(ctx, from.Digest(rec.TargetDigest).String(), to.Tag(j.req.GetTag()+image.TagSuffix).String()); err != nil {
		return fmt.Errorf("retag: %w", err)
	}
	j.log.Info("tagged existing conversion", "target", j.target, "target_digest", rec.TargetDigest)
	return nil
}

func (w *Worker) complete(ctx context.Context, j *job, rec *conversion.Record, rev uint64, c *converted, took time.Duration) error {
	ev := &skiffv1.ConversionCompleted{
		Source: j.source, SourceDigest: j.req.GetDigest(), Target: j.target, TargetDigest: c.digest.String(),
		BootstrapDigest: c.platforms[0].Bootstrap.String(), Attempt: int32(j.attempt),
		Duration: durationpb.New(took), CompletedAt: timestamppb.Now(),
	}
	for _, res := range c.platforms {
		s := res.Stats
		ev.BootstrapDigests = append(ev.BootstrapDigests, res.Bootstrap.String())
		ev.BootstrapSize += res.BootstrapSize
		ev.SourceBytes += res.SourceBytes
		ev.StoredBytes += s.StoredBytes
		ev.NewBytes += res.NewBytes
		ev.Files += int64(s.Files)
		ev.Chunks += int64(s.Chunks)
	}
	// The id makes a republish after a crash (before the record says
	// done) a duplicate rather than a second event.
	if _, err := w.pub.Publish(ctx, bus.SubjectCompleted, fmt.Sprintf("completed:%s:%d", j.req.GetDigest(), j.seq), ev); err != nil {
		return err
	}
	rec.State, rec.Reason, rec.Updated = conversion.Done, "", time.Now().UTC()
	rec.TargetDigest, rec.BootstrapDigest, rec.BootstrapSize = ev.TargetDigest, ev.BootstrapDigest, ev.BootstrapSize
	rec.BootstrapDigests = nil
	if len(ev.BootstrapDigests) > 1 {
		rec.BootstrapDigests = ev.BootstrapDigests
	}
	rec.SourceBytes, rec.StoredBytes, rec.NewBytes, rec.Duration = ev.SourceBytes, ev.StoredBytes, ev.NewBytes, took
	if _, err := w.update(ctx, j.key, rec, rev); err != nil {
		return err
	}
	w.counts.completed(ev, took)
	if err := j.msg.DoubleAck(ctx); err != nil {
		// The record says done: a redelivery only acks.
		j.log.Warn("ack after conversion", "err", err)
	}
	j.log.Info("converted", "target", j.target, "target_digest", c.digest, "platforms", len(c.platforms), "new_bytes", ev.NewBytes, "took", took.Round(time.Millisecond))
	return nil
}

func (w *Worker) fail(ctx context.Context, j *job, rec *conversion.Record, rev uint64, cause error, start time.Time) error {
	var took time.Duration
	if !start.IsZero() {
		took = time.Since(start)
	}
	attempts := min(j.attempt, w.opts.MaxAttempts)
	reason, err := w.publishFailed(ctx, j, attempts, cause, took)
	if err != nil {
		settle(j.msg.NakWithDelay(w.backoff(1)))
		return err
	}
	rec.State, rec.Reason, rec.Attempts, rec.Duration, rec.Updated = conversion.Failed, reason, attempts, took, time.Now().UTC()
	if _, err := w.update(ctx, j.key, rec, rev); err != nil {
		settle(j.msg.NakWithDelay(w.backoff(1)))
		return err
	}
	// Counted once the record says so: before, a redelivery fails the
	// request again.
	w.counts.failed.Add(1)
	settle(j.msg.DoubleAck(ctx))
	return cause
}

// publishFailed publishes the failure of j's request and returns its
// reason.
func (w *Worker) publishFailed(ctx context.Context, j *job, attempts int, cause error, took time.Duration) (string, error) {
	reason := fmt.Sprintf("gave up after %d attempts: %v", attempts, cause)
	j.log.Error("conversion failed", "reason", reason)
	ev := &skiffv1.ConversionFailed{
		Source: j.source, SourceDigest: j.req.GetDigest(), Reason: reason, Attempts: int32(attempts),
		Duration: durationpb.New(took), FailedAt: timestamppb.Now(),
	}
	if _, err := w.pub.Publish(ctx, bus.SubjectFailed, fmt.Sprintf("failed:%s:%d", j.req.GetDigest(), j.seq), ev); err != nil {
		return "", err
	}
	return reason, nil
}

// claimFailed settles a delivery whose record could not be claimed (the
// record cannot be read or written, or the conversion it holds cannot be
// tagged for this request). The consumer redelivers without limit, so
// after MaxAttempts failures in a row the request is reported failed
// rather than left waiting, unanswered, for ever.
func (w *Worker) claimFailed(ctx context.Context, j *job, err error) error {
	if ctx.Err() != nil {
		// Shutting down: hand the request straight to another worker.
		settle(j.msg.Nak())
		return err
	}
	w.counts.claimErrors.Add(1)
	n := w.claimFailures.add(j.seq, time.Now())
	if n < w.opts.MaxAttempts {
		delay := w.backoff(n)
		j.log.Warn("cannot claim conversion, will retry", "err", err, "failures", n, "retry_in", delay)
		settle(j.msg.NakWithDelay(delay))
		return err
	}
	reason, perr := w.publishFailed(ctx, j, w.opts.MaxAttempts, err, 0)
	if perr != nil {
		settle(j.msg.NakWithDelay(w.backoff(1)))
		return perr
	}
	if rerr := w.recordFailure(ctx, j, reason); rerr != nil {
		// The event is out; the record is only what status shows.
		j.log.Warn("record failure", "err", rerr)
	}
	w.claimFailures.forget(j.seq)
	w.counts.failed.Add(1)
	settle(j.msg.DoubleAck(ctx))
	return err
}

// recordFailure makes the record say that j's request failed, as the
// record follows the latest request: `skiffctl convert --remote`, which
// follows it, gets its answer, and the next push of the digest converts
// it anew (the conversion a Done record names may be what could not be
// tagged). A record another request is still converting is left to that
// request, and one that already answers this request is left alone.
func (w *Worker) recordFailure(ctx context.Context, j *job, reason string) error {
	for range 10 {
		now := time.Now().UTC()
		rec := &conversion.Record{
			Source: j.source, SourceDigest: j.req.GetDigest(), Target: j.target, State: conversion.Failed,
			Seq: j.seq, Attempts: w.opts.MaxAttempts, Worker: w.opts.Name, Reason: reason, Created: now, Updated: now,
		}
		entry, err := w.kv.Get(ctx, j.key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			b, err := rec.Marshal()
			if err != nil {
				return err
			}
			if _, err := w.kv.Create(ctx, j.key, b); errors.Is(err, jetstream.ErrKeyExists) {
				continue
			} else if err != nil {
				return fmt.Errorf("create record %s: %w", j.key, err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("read record %s: %w", j.key, err)
		}
		// A record that cannot be decoded is replaced.
		if old, err := conversion.Unmarshal(entry.Value()); err == nil {
			switch {
			case !old.State.Final() && old.Seq != j.seq,
				old.State == conversion.Done && (old.Seq == j.seq || old.Target == j.target):
				return nil
			}
			rec.Created = old.Created
		}
		if _, err := w.update(ctx, j.key, rec, entry.Revision()); !isConflict(err) {
			return err
		}
	}
	return fmt.Errorf("record %s: too many concurrent updates", j.key)
}

// tally counts the failed claims in a row of each request, by stream
// sequence. It lives in memory because a failed claim owns no record to
// count in; with several converter processes each counts the failures it
// sees, so a request may be tried more often before one gives up, but
// never for ever.
type tally struct {
	ttl time.Duration

	mu sync.Mutex
	m  map[uint64]tallied
}

type tallied struct {
	n    int
	last time.Time
}

// add counts a failure of seq at now and returns its failures in a row.
func (t *tally) add(seq uint64, now time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[uint64]tallied{}
	}
	for s, e := range t.m {
		if now.Sub(e.last) > t.ttl {
			delete(t.m, s)
		}
	}
	e := t.m[seq]
	e.n++
	e.last = now
	t.m[seq] = e
	return e.n
}

// forget drops the count of seq, after a claim that did not fail or the
// request's end.
func (t *tally) forget(seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, seq)
}

func (w *Worker) update(ctx context.Context, key string, rec *conversion.Record, rev uint64) (uint64, error) {
	b, err := rec.Marshal()
	if err != nil {
		return 0, err
	}
	rev, err = w.kv.Update(ctx, key, b, rev)
	if err != nil {
		return 0, fmt.Errorf("update record %s: %w", key, err)
	}
	return rev, nil
}

// isConflict reports a compare-and-swap that lost to another writer.
func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

// backoff is the redelivery delay after a failed attempt: Backoff doubled
// per attempt, capped at BackoffMax.
func (w *Worker) backoff(attempt int) time.Duration {
	d := w.opts.Backoff
	for i := 1; i < attempt && d < w.opts.BackoffMax; i++ {
		d *= 2
	}
	return min(d, w.opts.BackoffMax)
}

// settle logs a failed ack or nak: JetStream redelivers after the ack wait
// anyway, and the record makes that redelivery harmless.
func settle(err error) {
	if err != nil {
		slog.Warn("settle message", "err", err)
	}
}
