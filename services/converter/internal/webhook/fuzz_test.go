package webhook

import (
	"strings"
	"testing"

	"github.com/skiff-dev/skiff/pkg/image"
)

// FuzzParse feeds arbitrary bodies to both webhook parsers. Whatever they
// accept must be a valid, convertible request: never a -skiff tag, never a
// malformed digest, never a request without registry or repository.
func FuzzParse(f *testing.F) {
	f.Add(notification(event("push", ociManifest, "app", "v1", dgst)))
	f.Add(notification(event("push", ociManifest, "app", "v1-skiff", dgst), event("pull", ociManifest, "app", "v1", dgst2)))
	f.Add(harbor("PUSH_ARTIFACT", "library/app", resource("v1", dgst)))
	f.Add(`{"events":null}`)
	f.Add(`{"type":"PUSH_ARTIFACT","event_data":{}}`)
	f.Fuzz(func(t *testing.T, body string) {
		for _, parse := range []parser{parseDistribution, parseHarbor} {
			reqs, ignored, err := parse([]byte(body))
			if err != nil {
				if len(reqs) != 0 {
					t.Fatal("requests returned with an error")
				}
				continue
			}
			if ignored < 0 {
				t.Fatalf("negative ignored count %d", ignored)
			}
			for _, r := range reqs {
				ok, verr := Validate(r)
				if verr != nil || !ok {
					t.Fatalf("accepted request fails validation: %v %v (%+v)", ok, verr, r)
				}
				if strings.HasSuffix(r.GetTag(), image.TagSuffix) {
					t.Fatalf("accepted a push of Skiff's own output: %+v", r)
				}
			}
		}
	})
}
