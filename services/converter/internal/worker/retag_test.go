package worker

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/conversion"
	"github.com/skiff-dev/skiff/pkg/convert"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/dir"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// TestRetagChecksStore converts an image pushed as v1, lets garbage
// collection take part of the conversion's data from the store, and
// handles a push of the same digest as v2: the worker tags the earlier
// conversion only if its bootstrap and blobs are all still stored, and
// converts anew otherwise, so that v2-skiff never names missing data.
func TestRetagChecksStore(t *testing.T) {
	tests := []struct {
		name        string
		gone        func(b *bootstrap.Bootstrap, d bootstrap.Digest) []string // keys gc deleted
		wantRetag   bool
		wantUpdated bool // the completed event is published anew
	}{
		{"all stored", func(*bootstrap.Bootstrap, bootstrap.Digest) []string { return nil }, true, false},
		{"bootstrap deleted", func(_ *bootstrap.Bootstrap, d bootstrap.Digest) []string {
			return []string{store.BootstrapKey(d.Hex())}
		}, false, true},
		{"bootstrap and blobs deleted", func(b *bootstrap.Bootstrap, d bootstrap.Digest) []string {
			keys := []string{store.BootstrapKey(d.Hex())}
			for _, blob := range b.Blobs {
				keys = append(keys, store.BlobKey(blob.Hex()), store.IndexKey(blob.Hex()))
			}
			return keys
		}, false, true},
		{"a blob deleted", func(b *bootstrap.Bootstrap, _ bootstrap.Digest) []string {
			return []string{store.BlobKey(b.Blobs[0].Hex())}
		}, false, true},
	}
	host := emptyRegistry(t)
	ctx := context.Background()
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A source image of its own per case, so each starts with a
			// fresh record.
			l, err := fixture.Layer(fixture.Gzip, []fixture.Entry{
				fixture.File("a", 0o644, string(fixture.Random(uint64(i), 300<<10))),
				fixture.File("b", 0o644, fmt.Sprintf("case %d", i)),
			})
			if err != nil {
				t.Fatal(err)
			}
			src, err := fixture.Image(l)
			if err != nil {
				t.Fatal(err)
			}
			digest, err := src.Digest()
			if err != nil {
				t.Fatal(err)
			}
			for _, tag := range []string{"v1", "v2"} {
				ref, err := name.NewTag(host + "/demo/app:" + tag)
				if err != nil {
					t.Fatal(err)
				}
				if err := remote.Write(ref, src); err != nil {
					t.Fatal(err)
				}
			}

			w, b, pub := newTestWorker(t, "")
			st, err := dir.New(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			w.conv = convert.New(st, convert.Options{WorkDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})

			msg := newMsg(t, 1, 1, &skiffv1.ImagePushed{Registry: host, Repository: "demo/app", Tag: "v1", Digest: digest.String()})
			w.Handle(ctx, msg)
			rec, err := b.Record(ctx, digest.String())
			if err != nil {
				t.Fatal(err)
			}
			if msg.settled != "ack" || rec.State != conversion.Done {
				t.Fatalf("v1: settled %q, record %+v; want ack and done", msg.settled, rec)
			}
			old, oldDigest, err := image.LoadBootstrap(ctx, host+"/demo/app:v1"+image.TagSuffix)
			if err != nil {
				t.Fatal(err)
			}
			for _, key := range tt.gone(old, oldDigest) {
				if err := st.Delete(ctx, key); err != nil {
					t.Fatal(err)
				}
			}

			pub.reset()
			msg = newMsg(t, 2, 1, &skiffv1.ImagePushed{Registry: host, Repository: "demo/app", Tag: "v2", Digest: digest.String()})
			w.Handle(ctx, msg)
			if msg.settled != "ack" {
				t.Fatalf("v2: settled %q, want ack", msg.settled)
			}
			rec, err = b.Record(ctx, digest.String())
			if err != nil {
				t.Fatal(err)
			}
			if rec.State != conversion.Done || rec.Seq != 2 || rec.Target != host+"/demo/app:v2"+image.TagSuffix {
				t.Errorf("record %+v, want done for request 2", rec)
			}
			var completed int
			for _, m := range pub.evs {
				if _, ok := m.(*skiffv1.ConversionCompleted); ok {
					completed++
				}
			}
			if retagged := w.counts.retagged.Load() == 1; retagged != tt.wantRetag || (completed == 1) != tt.wantUpdated {
				t.Errorf("v2: retagged %v, %d completed events; want retagged %v, converted anew %v", retagged, completed, tt.wantRetag, tt.wantUpdated)
			}

			// Whatever happened, v2-skiff names data that is all stored.
			nb, nd, err := image.LoadBootstrap(ctx, host+"/demo/app:v2"+image.TagSuffix)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.Stat(ctx, store.BootstrapKey(nd.Hex())); err != nil {
				t.Errorf("bootstrap of v2%s: %v", image.TagSuffix, err)
			}
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			rep, err := fetch.Verify(cctx, nb, fetch.NewStoreSource("store", st), fetch.VerifyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Bad) > 0 {
				t.Errorf("v2%s: %d of %d chunks missing or bad, first: %v", image.TagSuffix, len(rep.Bad), rep.Chunks, rep.Bad[0].Err)
			}
		})
	}
}
