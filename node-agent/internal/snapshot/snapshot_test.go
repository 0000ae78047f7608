package snapshot

import (
	"reflect"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
)

func TestRewrite(t *testing.T) {
	overlay := func(opts ...string) []mount.Mount {
		return []mount.Mount{{Type: "overlay", Source: "overlay", Options: opts}}
	}
	tests := []struct {
		name    string
		in      []mount.Mount
		depth   int
		want    []mount.Mount
		wantErr bool
	}{
		{
			name:  "container on a lazy image",
			in:    overlay("workdir=/w", "upperdir=/u", "lowerdir=/l2:/l1:/l0", "index=off"),
			depth: 0,
			want:  overlay("workdir=/w", "upperdir=/u", "index=off", "lowerdir=/fuse"),
		},
		{
			name:  "ordinary layers above the lazy one stay",
			in:    overlay("workdir=/w", "upperdir=/u", "lowerdir=/l2:/l1:/l0"),
			depth: 1,
			want:  overlay("workdir=/w", "upperdir=/u", "lowerdir=/l2:/fuse"),
		},
		{
			name:  "read-only view of a lazy image becomes a bind mount",
			in:    overlay("lowerdir=/l1:/l0", "index=off"),
			depth: 0,
			want:  []mount.Mount{{Type: "bind", Source: "/fuse", Options: []string{"ro", "rbind"}}},
		},
		{
			name:  "view of a single lazy layer",
			in:    []mount.Mount{{Type: "bind", Source: "/l0", Options: []string{"ro", "rbind"}}},
			depth: 0,
			want:  []mount.Mount{{Type: "bind", Source: "/fuse", Options: []string{"ro", "rbind"}}},
		},
		{name: "depth beyond the lower directories", in: overlay("upperdir=/u", "lowerdir=/l0"), depth: 1, wantErr: true},
		{name: "bind with a deeper lazy layer", in: []mount.Mount{{Type: "bind", Source: "/l0"}}, depth: 1, wantErr: true},
		{name: "unknown mount type", in: []mount.Mount{{Type: "erofs"}}, wantErr: true},
		{name: "several mounts", in: append(overlay(), overlay()...), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := rewrite(tt.in, tt.depth, "/fuse")
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseLayer(t *testing.T) {
	tests := []struct {
		in         string
		idx, count int
		ok         bool
	}{
		{"0/1", 0, 1, true},
		{"2/3", 2, 3, true},
		{"3/3", 0, 0, false},
		{"-1/3", 0, 0, false},
		{"1", 0, 0, false},
		{"a/b", 0, 0, false},
		{"", 0, 0, false},
	}
	for _, tt := range tests {
		idx, count, ok := parseLayer(tt.in)
		if ok != tt.ok || (ok && (idx != tt.idx || count != tt.count)) {
			t.Errorf("parseLayer(%q) = %d, %d, %v; want %d, %d, %v", tt.in, idx, count, ok, tt.idx, tt.count, tt.ok)
		}
	}
}

func TestLowerDirs(t *testing.T) {
	tests := []struct {
		name string
		in   []mount.Mount
		want []string
	}{
		{"overlay", []mount.Mount{{Type: "overlay", Options: []string{"upperdir=/u", "lowerdir=/a:/b"}}}, []string{"/a", "/b"}},
		{"read-only bind of the parent", []mount.Mount{{Type: "bind", Source: "/a", Options: []string{"ro", "rbind"}}}, []string{"/a"}},
		{"writable bind has no parent", []mount.Mount{{Type: "bind", Source: "/u", Options: []string{"rw", "rbind"}}}, nil},
	}
	for _, tt := range tests {
		if got := lowerDirs(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}
