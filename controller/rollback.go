package controller

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"

	"github.com/govnet/govnet/api"
)

// rollback is what a restore of a backup of this cluster takes from the
// backup (applyRollBack): its network, its registry, its last policy and
// where its audit chain ended (chainExtends). It is what a
// CmdBackupRollBack carries instead of the whole backup, which every node
// decoded while its writes waited: at 20,000 gateways 280 KB against
// 21.5 MB (docs/performance.md, "A twentieth run").
type rollback struct {
	Overlay   netip.Prefix      `json:"overlay"`
	Agencies  []api.Agency      `json:"agencies"` // by code
	Gateways  []rollbackGateway `json:"gateways"` // by id
	Policy    *api.Policy       `json:"policy,omitempty"`
	AuditLen  uint64            `json:"audit_len"`
	AuditHead string            `json:"audit_head,omitempty"` // the last entry's hash

	agencies map[string]*api.Agency      // Agencies by code (index)
	gateways map[string]*rollbackGateway // Gateways by id (index)
}

// rollbackGateway is what a restore takes of a gateway's record.
type rollbackGateway struct {
	ID     string         `json:"id"`
	Agency string         `json:"agency"`
	LANs   []netip.Prefix `json:"lans,omitempty"`
	Status string         `json:"status"`
}

// rollbackOf takes from bk, a backup's state, what a restore uses.
func rollbackOf(bk *State) *rollback {
	rb := &rollback{Overlay: bk.overlay, AuditLen: bk.audit.len(), AuditHead: bk.audit.head.Hash}
	for _, code := range slices.Sorted(maps.Keys(bk.agencies)) {
		rb.Agencies = append(rb.Agencies, *bk.agencies[code])
	}
	for _, id := range slices.Sorted(maps.Keys(bk.gateways)) {
		g := bk.gateways[id]
		rb.Gateways = append(rb.Gateways, rollbackGateway{ID: g.ID, Agency: g.Agency, LANs: g.LANs, Status: g.Status})
	}
	if k := len(bk.policies); k > 0 {
		p := bk.policies[k-1]
		rb.Policy = &p
	}
	if err := rb.index(); err != nil {
		panic(err) // a state's maps have no key twice
	}
	return rb
}

// readRollback decodes a rollback as CmdBackupRollBack carries it
// (JSON), from r, of at most maxSnapshotBody bytes.
func readRollback(r io.Reader) (*rollback, error) {
	b, err := io.ReadAll(newBoundedReader(r, maxSnapshotBody))
	if err != nil {
		return nil, err
	}
	rb := new(rollback)
	if err := json.Unmarshal(b, rb); err != nil {
		return nil, err
	}
	return rb, rb.index()
}

// index builds the maps of rb's agencies and gateways, and refuses a
// code or an id listed twice.
func (rb *rollback) index() error {
	rb.agencies = make(map[string]*api.Agency, len(rb.Agencies))
	for i := range rb.Agencies {
		a := &rb.Agencies[i]
		if _, dup := rb.agencies[a.Code]; dup {
			return fmt.Errorf("agency %s is listed twice", a.Code)
		}
		rb.agencies[a.Code] = a
	}
	rb.gateways = make(map[string]*rollbackGateway, len(rb.Gateways))
	for i := range rb.Gateways {
		g := &rb.Gateways[i]
		if _, dup := rb.gateways[g.ID]; dup {
			return fmt.Errorf("gateway %s is listed twice", g.ID)
		}
		rb.gateways[g.ID] = g
	}
	return nil
}
