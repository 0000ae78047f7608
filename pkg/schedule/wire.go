package schedule

import (
	"fmt"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/piece"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// The conversions between the P2P messages and the Go types, in one
// place for every side of the wire: peers, seeders and schedulers.

// AnnounceMessage encodes a peer's state; leaving marks a goodbye.
func AnnounceMessage(p Peer, holdings []piece.Holding, leaving bool) *skiffv1.PeerAnnounce {
	m := &skiffv1.PeerAnnounce{
		PeerId: p.ID, Address: p.Addr, Role: roleMessage(p.Role),
		Load: int32(p.Load), FreeBytes: p.Free, Leaving: leaving, Zone: p.Zone,
	}
	for _, h := range holdings {
		bh := &skiffv1.BlobHoldings{Blob: h.Blob[:], Ranges: make([]uint64, 0, 2*len(h.Ranges))}
		for _, r := range h.Ranges {
			bh.Ranges = append(bh.Ranges, uint64(r.Off), uint64(r.End-r.Off))
		}
		m.Blobs = append(m.Blobs, bh)
	}
	return m
}

// PeerFromMessage decodes an announcement.
func PeerFromMessage(m *skiffv1.PeerAnnounce) (Peer, error) {
	p := Peer{ID: m.GetPeerId(), Addr: m.GetAddress(), Load: int(m.GetLoad()), Free: m.GetFreeBytes(), Zone: m.GetZone(),
		Holdings: make(map[bootstrap.Digest]piece.Ranges, len(m.GetBlobs()))}
	if p.ID == "" {
		return p, fmt.Errorf("announcement without a peer id")
	}
	var err error
	if p.Role, err = roleFromMessage(m.GetRole()); err != nil {
		return p, fmt.Errorf("announcement of %s: %w", p.ID, err)
	}
	for _, bh := range m.GetBlobs() {
		blob, err := Digest(bh.GetBlob())
		if err != nil {
			return p, fmt.Errorf("announcement of %s: %w", p.ID, err)
		}
		rs := bh.GetRanges()
		if len(rs)%2 != 0 {
			return p, fmt.Errorf("announcement of %s: blob %s: odd range list", p.ID, blob)
		}
		list := make([]piece.Range, 0, len(rs)/2)
		for i := 0; i < len(rs); i += 2 {
			off, n := int64(rs[i]), int64(rs[i+1])
			if off < 0 || n < 0 || off+n < off {
				return p, fmt.Errorf("announcement of %s: blob %s: range out of bounds", p.ID, blob)
			}
			list = append(list, piece.Range{Off: off, End: off + n})
		}
		p.Holdings[blob] = piece.Normalize(append(list, p.Holdings[blob]...))
	}
	return p, nil
}

// ParentsMessage encodes a ranked parent list.
func ParentsMessage(ps []Parent) *skiffv1.ParentsReply {
	m := &skiffv1.ParentsReply{}
	for _, p := range ps {
		m.Parents = append(m.Parents, &skiffv1.Parent{PeerId: p.ID, Address: p.Addr, Role: roleMessage(p.Role), Seeds: p.Seeds, Fetching: p.Fetching})
	}
	return m
}

// ParentsFromMessage decodes a ranked parent list, skipping entries
// without an address.
func ParentsFromMessage(m *skiffv1.ParentsReply) []Parent {
	var out []Parent
	for _, p := range m.GetParents() {
		role, err := roleFromMessage(p.GetRole())
		if err != nil || p.GetAddress() == "" {
			continue
		}
		out = append(out, Parent{ID: p.GetPeerId(), Addr: p.GetAddress(), Role: role, Seeds: p.GetSeeds(), Fetching: p.GetFetching()})
	}
	return out
}

// ParentsRequest asks where to fetch [Off, Off+Size) of Blob.
type ParentsRequest struct {
	PeerID    string // the asker, never offered as its own parent
	Blob      bootstrap.Digest
	Off, Size int64
}

// ParentsRequestMessage encodes r.
func ParentsRequestMessage(r ParentsRequest) *skiffv1.ParentsRequest {
	return &skiffv1.ParentsRequest{PeerId: r.PeerID, Blob: r.Blob[:], Offset: uint64(r.Off), Size: uint64(r.Size)}
}

// ParentsRequestFromMessage decodes a parents request.
func ParentsRequestFromMessage(m *skiffv1.ParentsRequest) (ParentsRequest, error) {
	r := ParentsRequest{PeerID: m.GetPeerId(), Off: int64(m.GetOffset()), Size: int64(m.GetSize())}
	var err error
	if r.Blob, err = Digest(m.GetBlob()); err != nil {
		return r, fmt.Errorf("parents request: %w", err)
	}
	if r.Off < 0 || r.Size <= 0 || r.Off+r.Size < r.Off {
		return r, fmt.Errorf("parents request: range [%d,+%d) out of bounds", m.GetOffset(), m.GetSize())
	}
	return r, nil
}

// FlightMessage encodes f as chosen by the scheduler with id scheduler.
func FlightMessage(scheduler string, f Flight) *skiffv1.ParentChosen {
	return &skiffv1.ParentChosen{SchedulerId: scheduler, AskerId: f.Asker, ParentId: f.Parent, Depth: uint32(max(f.Depth, 0)),
		Blob: f.Blob[:], Offset: uint64(f.Off), Size: uint64(f.Size)}
}

// FlightFromMessage decodes a flight and the scheduler that chose it.
func FlightFromMessage(m *skiffv1.ParentChosen) (scheduler string, f Flight, err error) {
	f = Flight{Asker: m.GetAskerId(), Parent: m.GetParentId(), Depth: int(min(m.GetDepth(), 1<<16)), Off: int64(m.GetOffset()), Size: int64(m.GetSize())}
	if f.Blob, err = Digest(m.GetBlob()); err != nil {
		return "", f, fmt.Errorf("parent chosen: %w", err)
	}
	if f.Asker == "" || f.Parent == "" {
		return "", f, fmt.Errorf("parent chosen: no asker or parent")
	}
	if f.Off < 0 || f.Size <= 0 || f.Off+f.Size < f.Off {
		return "", f, fmt.Errorf("parent chosen: range [%d,+%d) out of bounds", m.GetOffset(), m.GetSize())
	}
	return m.GetSchedulerId(), f, nil
}

// Report says that Peer sent Reporter bad bytes for [Off, Off+Size) of
// Blob.
type Report struct {
	Reporter, Peer string
	Blob           bootstrap.Digest
	Off, Size      int64
	Reason         string
}

// ReportMessage encodes r.
func ReportMessage(r Report) *skiffv1.PeerReport {
	return &skiffv1.PeerReport{ReporterId: r.Reporter, PeerId: r.Peer, Blob: r.Blob[:], Offset: uint64(r.Off), Size: uint64(r.Size), Reason: r.Reason}
}

// ReportFromMessage decodes a report. Only the reported peer is needed;
// the range is for logs, and left zero when it does not decode.
func ReportFromMessage(m *skiffv1.PeerReport) (Report, error) {
	r := Report{Reporter: m.GetReporterId(), Peer: m.GetPeerId(), Off: int64(m.GetOffset()), Size: int64(m.GetSize()), Reason: m.GetReason()}
	if r.Peer == "" {
		return r, fmt.Errorf("report without a peer id")
	}
	r.Blob, _ = Digest(m.GetBlob())
	return r, nil
}

// Digest decodes a 32-byte blob digest from the wire.
func Digest(b []byte) (bootstrap.Digest, error) {
	var d bootstrap.Digest
	if len(b) != len(d) {
		return d, fmt.Errorf("blob digest of %d bytes, want %d", len(b), len(d))
	}
	copy(d[:], b)
	return d, nil
}

func roleMessage(r Role) skiffv1.PeerRole {
	switch r {
	case RolePeer:
		return skiffv1.PeerRole_PEER_ROLE_PEER
	case RoleSeeder:
		return skiffv1.PeerRole_PEER_ROLE_SEEDER
	}
	return skiffv1.PeerRole_PEER_ROLE_UNSPECIFIED
}

func roleFromMessage(r skiffv1.PeerRole) (Role, error) {
	switch r {
	case skiffv1.PeerRole_PEER_ROLE_PEER:
		return RolePeer, nil
	case skiffv1.PeerRole_PEER_ROLE_SEEDER:
		return RoleSeeder, nil
	}
	return 0, fmt.Errorf("unknown role %v", r)
}
