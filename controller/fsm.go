package controller

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/hashicorp/raft"
)

// ApplyResult is what the FSM returns for every command: nil Err means the
// command took effect. It is told apart from raft's own errors by type.
type ApplyResult struct {
	Index uint64
	Err   error
}

// FSM applies committed commands to a State.
type FSM struct {
	state    *State
	spillDir string // where the state's audit chain and certificate archive spill (see spillFile)
	log      *slog.Logger
	onApply  func(index uint64, t CommandType) // called after a command took effect, outside the lock

	applied   atomic.Int64 // bytes of the log entries applied since the node started
	entries   atomic.Int64 // and how many
	snapshots atomic.Int64 // raft snapshots written since the node started
	snapMu    sync.Mutex
	lastSnap  snapMark // the last snapshot raft took or restored

	// restored, when set (by the fault tests only), is called at the
	// end of every Restore, with the new state in place.
	restored atomic.Pointer[func()]
}

// snapMark is where a raft snapshot stood: FSM.entries and FSM.applied
// when it was taken or restored (counts, not raft indexes: a recovered
// cluster's state index runs ahead of its raft log's), and its size.
type snapMark struct {
	entries, applied, size int64
}

// Raft snapshots (snapshotDue): raft's own count of entries
// (Config.SnapshotThreshold) would have a node write its whole state
// every 8,192 entries, however large the state: at 20,000 gateways
// 60–100 MB and 1–1.5 CPU s a time, every few minutes while gateways
// reconnect or renew in bulk. A node takes one instead once the entries
// applied since the last add up to that snapshot's size (a restart then
// replays about as many bytes of log as a snapshot writes, twice as many
// after a burst, below), and number at
// least snapshotMinEntries; or at snapshotMaxEntries whatever their size
// (raft's own threshold too, which raft checks only every 2–4 minutes):
// that bounds the log, and a restart's replay, when the state grows
// faster than the log (each command adds an audit entry).
//
// A snapshot due in a burst of writes (a network-wide re-issue, a policy
// round, gateways reconnecting by the thousand) waits for the burst to
// end, until the log since the last snapshot is twice its size: writing
// the state competes with the burst for the CPU, and copying it holds
// the applies. A burst is a check period (snapshotCheckEvery) in which
// the entries applied added up to more than 1/snapshotQuietShare of the
// last snapshot's size. The agents' periodic reports are far below that
// (at 20,000 gateways, a report each every 2 minutes, well under 1 MB a
// period against 3 MB for a 100 MB state).
const (
	snapshotMinEntries = 8192
	snapshotMaxEntries = 131072
	snapshotQuietShare = 32
)

// snapshotDue says whether the node should take a snapshot now; recent
// is the bytes of log entries applied in the check period just ended.
func (f *FSM) snapshotDue(recent int64) bool {
	f.snapMu.Lock()
	m := f.lastSnap
	f.snapMu.Unlock()
	entries, bytes := f.entries.Load()-m.entries, f.applied.Load()-m.applied
	switch {
	case entries >= snapshotMaxEntries:
		return true
	case entries < snapshotMinEntries || bytes < m.size:
		return false
	}
	return bytes >= 2*m.size || recent <= m.size/snapshotQuietShare
}

// snapshotStats returns the raft snapshots written since the start, the
// size of the last one written or restored, and the bytes of the
// entries applied since it.
func (f *FSM) snapshotStats() (written, size, since int64) {
	f.snapMu.Lock()
	m := f.lastSnap
	f.snapMu.Unlock()
	return f.snapshots.Load(), m.size, f.applied.Load() - m.applied
}

// markSnapshot moves the mark to m, unless it is already past it (a
// snapshot restored while an older one was being written).
func (f *FSM) markSnapshot(m snapMark) {
	f.snapMu.Lock()
	if m.entries >= f.lastSnap.entries {
		f.lastSnap = m
	}
	f.snapMu.Unlock()
}

// NewFSM returns an FSM over a fresh state, whose audit chain spills to
// os.TempDir().
func NewFSM(log *slog.Logger, onApply func(uint64, CommandType)) *FSM {
	return newFSMIn("", log, onApply)
}

// newFSMIn is NewFSM with the audit chain's and the archive's files in spillDir.
func newFSMIn(spillDir string, log *slog.Logger, onApply func(uint64, CommandType)) *FSM {
	if onApply == nil {
		onApply = func(uint64, CommandType) {}
	}
	return &FSM{state: newState(spillDir), spillDir: spillDir, log: log, onApply: onApply}
}

// State returns the state the FSM maintains.
func (f *FSM) State() *State { return f.state }

// Apply implements raft.FSM. It is one switch into the applyX functions.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand || len(l.Data) == 0 {
		return nil
	}
	f.applied.Add(int64(len(l.Data)))
	f.entries.Add(1)
	t, body := CommandType(l.Data[0]), l.Data[1:]
	if t == CmdBackupRestore || t == CmdBackupRollBack {
		return f.applyBackupRestore(t, l.Index, body)
	}
	s := f.state
	s.mu.Lock()
	entry := s.auditEntry(l.Index, t, l.Data)
	s.applying = l.Index
	err := f.dispatch(t, body)
	if errors.Is(err, errSpillIO) || errors.Is(err, errUpgradeNode) {
		// The command could not take effect here, and did on the nodes
		// whose disks work (or whose release follows it): this node's
		// state would part from theirs.
		s.mu.Unlock()
		panic(fmt.Sprintf("raft index %d: %v", l.Index, err))
	}
	if err == nil {
		if aerr := s.appendAudit(entry); aerr != nil {
			// The command took effect and its entry cannot be kept: this
			// node's state can no longer be trusted. Raft replays the log
			// into a fresh state at the next start.
			s.mu.Unlock()
			panic(fmt.Sprintf("raft index %d: %v", l.Index, aerr))
		}
		s.noteViewChange(t, body)
	}
	s.setIndex(l.Index)
	s.mu.Unlock()
	if err == nil {
		f.onApply(l.Index, t)
	}
	return ApplyResult{Index: l.Index, Err: err}
}

func (f *FSM) dispatch(t CommandType, body []byte) error {
	s := f.state
	switch t {
	case CmdAuditCheckpoint:
		return applyJSON(body, s.applyAuditCheckpoint)
	case CmdGatewayReports:
		return applyJSON(body, s.applyGatewayReports)
	case CmdGatewayReportsPacked:
		return applyPacked(body, s.applyGatewayReports)
	case CmdGatewayRefreshesPacked:
		return applyPacked(body, s.applyGatewayRefreshes)
	case CmdGatewayRefreshes:
		return applyJSON(body, s.applyGatewayRefreshes)
	case CmdRenewCall:
		return applyJSON(body, s.applyRenewCall)
	case CmdClusterLevel:
		return applyJSON(body, s.applyClusterLevel)
	case CmdCertArchive:
		return applyJSON(body, s.applyCertArchive)
	case CmdPersonInvite:
		return applyJSON(body, s.applyPersonInvite)
	case CmdPersonEnroll:
		return applyJSON(body, s.applyPersonEnroll)
	case CmdPersonRenew:
		return applyJSON(body, s.applyPersonRenew)
	case CmdInitNetwork:
		return applyJSON(body, s.applyInitNetwork)
	case CmdAgencyUpsert:
		return applyJSON(body, s.applyAgencyUpsert)
	case CmdGatewayAdd:
		return applyJSON(body, s.applyGatewayAdd)
	case CmdGatewayRegister:
		return applyJSON(body, s.applyGatewayRegister)
	case CmdTokenIssue:
		return applyJSON(body, s.applyTokenIssue)
	case CmdGatewayEnroll:
		return applyJSON(body, s.applyGatewayEnroll)
	case CmdPolicyPublish:
		return applyJSON(body, s.applyPolicyPublish)
	case CmdGatewayReport:
		return applyJSON(body, s.applyGatewayReport)
	case CmdMemberUpsert:
		return applyJSON(body, s.applyMemberUpsert)
	case CmdMemberRemove:
		return applyJSON(body, s.applyMemberRemove)
	case CmdPersonUpsert:
		return applyJSON(body, s.applyPersonUpsert)
	case CmdRequestCreate:
		return applyJSON(body, s.applyRequestCreate)
	case CmdRequestDecide:
		return applyJSON(body, s.applyRequestDecide)
	case CmdStateRestored:
		return applyJSON(body, func(*StateRestoredRequest) error { return nil })
	case CmdCertRecord:
		return applyJSON(body, s.applyCertRecord)
	case CmdCertRevoke:
		return applyJSON(body, s.applyCertRevoke)
	case CmdGatewayRenew:
		return applyJSON(body, s.applyGatewayRenew)
	case CmdGatewayRenews:
		return applyJSON(body, s.applyGatewayRenews)
	case CmdCRLPublish:
		return applyJSON(body, s.applyCRLPublish)
	case CmdIssuerUpsert:
		return applyJSON(body, s.applyIssuerUpsert)
	case CmdAgencyImport:
		return applyJSON(body, s.applyAgencyImport)
	case CmdAgencyMerge:
		return applyJSON(body, s.applyAgencyMerge)
	case CmdAgencyReparent:
		return applyJSON(body, s.applyAgencyReparent)
	case CmdAgencyClose:
		return applyJSON(body, s.applyAgencyClose)
	case CmdGatewayDecommission:
		return applyJSON(body, s.applyGatewayDecommission)
	}
	if t&IgnoreUnknownTypeFlag != 0 {
		f.log.Warn("skipping unknown command type", "type", uint8(t))
		return nil
	}
	// A command this node does not understand would make its state diverge.
	panic(fmt.Sprintf("controller: unknown command type %d: upgrade this node", uint8(t)))
}

func applyJSON[T any](body []byte, apply func(*T) error) error {
	req := new(T)
	if err := json.Unmarshal(body, req); err != nil {
		return fmt.Errorf("%w: decode command: %v", ErrBadRequest, err)
	}
	return apply(req)
}

func applyPacked(body []byte, apply func(*GatewayReportsRequest) error) error {
	req, err := decodeReportsPacked(body)
	if err != nil {
		return fmt.Errorf("decode command: %w", err)
	}
	return apply(req)
}

// Snapshot format: a header line, then one typed JSON record per line.
// A state at a cluster level above 1 is written as format 2, whose header
// names the level: the records are the same, and a release before levels
// refuses it (it could not follow a cluster at that level).
const (
	snapshotFormat       = "govnet-state/1"
	snapshotFormatLevels = "govnet-state/2"
)

type snapshotHeader struct {
	Format string `json:"format"`
	Index  uint64 `json:"index"`
	Level  int    `json:"level,omitempty"` // format 2's cluster level
}

type snapshotRecord struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

type snapshotNetwork struct {
	Overlay netip.Prefix `json:"overlay"`
}

// Snapshot implements raft.FSM: it copies the state under the read lock
// and writes it out later, off the apply path. Raft calls it between two
// applies, so its time under the lock is time no command is applied:
// the thousands of agencies, gateways, tokens and certificates are
// copied as values here and encoded in Persist. Once written, where it
// stands is what snapshotDue measures from.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	snap, err := f.snapshot()
	if err == nil {
		m := snapMark{entries: f.entries.Load(), applied: f.applied.Load()}
		snap.persisted = func(size int64) { m.size = size; f.markSnapshot(m); f.snapshots.Add(1) }
	}
	return snap, err
}

// snapshot copies the state into a snapshot: raft's (Snapshot), a
// backup's or a restore's.
func (f *FSM) snapshot() (*fsmSnapshot, error) {
	s := f.state
	start := time.Now()
	s.mu.RLock()
	snap, err := snapshotOf(s)
	s.mu.RUnlock()
	if err == nil {
		snap.log, snap.took = f.log, time.Since(start)
	}
	return snap, err
}

// snapshotOf copies s (s.mu held, or s private) into a snapshot. The
// records' order is the file's: see readSnapshot.
func snapshotOf(s *State) (*fsmSnapshot, error) {
	snap := &fsmSnapshot{header: snapshotHeader{Format: snapshotFormat, Index: s.index}}
	if l := s.Level(); l > 1 {
		snap.header.Format, snap.header.Level = snapshotFormatLevels, l
	}
	var err error
	// add encodes one of the few records of a kind at once.
	add := func(typ string, v any) {
		b, e := json.Marshal(v)
		if e != nil {
			err = errors.Join(err, fmt.Errorf("snapshot %s: %w", typ, e))
			return
		}
		snap.parts = append(snap.parts, func(w *bufio.Writer) error { return writeSnapshotRecord(w, typ, b) })
	}
	if s.overlay.IsValid() {
		add("network", snapshotNetwork{Overlay: s.overlay})
	}
	snap.parts = append(snap.parts,
		valueRecords("agency", s.agencies, func(a *api.Agency) api.Agency { return *a }, func(a *api.Agency) string { return a.Code }),
		valueRecords("gateway", s.gateways, copyGateway, func(g *api.Gateway) string { return g.ID }),
		valueRecords("token", s.tokens, func(t *tokenRecord) tokenRecord { return *t }, func(t *tokenRecord) string { return t.Hash }))
	for _, p := range s.policies {
		add("policy", p)
	}
	for _, m := range s.membersSorted() {
		add("member", m)
	}
	for _, node := range slices.Sorted(maps.Keys(s.removed)) {
		add("removed-node", removedNode{Node: node, At: s.removed[node]})
	}
	for _, p := range s.peopleSorted() {
		add("person", p)
	}
	for _, r := range s.requestsSorted() {
		add("request", r)
	}
	// A certificate's SANs are replaced, never changed in place, so a
	// copy of the record may share them.
	snap.parts = append(snap.parts, valueRecords("cert", s.certs, func(c *api.Certificate) api.Certificate { return *c }, func(c *api.Certificate) string { return c.Serial }))
	for _, r := range s.issuersSorted() {
		add("issuer", r)
	}
	if s.renewCall != nil {
		add("renew-call", s.renewCall)
	}
	// The archive and the audit chain, the bulk of a snapshot, are
	// appended to; their lines up to now are copied in Persist.
	snap.parts = append(snap.parts, copyLines("archived", s.archive.from(0)), copyLines("audit", s.audit.lines(0)))
	for _, c := range s.checkpoints {
		add("checkpoint", c)
	}
	return snap, err
}

// fsmSnapshot is a state copied for Persist: each part writes one kind
// of record, in the file's order.
type fsmSnapshot struct {
	header snapshotHeader
	parts  []func(*bufio.Writer) error
	// log, when set, is told how long the copy took (applies wait for
	// it) and how long the writing.
	log  *slog.Logger
	took time.Duration
	// persisted, when set, is told the size of the snapshot written
	// (raft's: snapshotDue; a backup sets none).
	persisted func(size int64)
}

// valueRecords copies the records of m (with clone: nothing the state may
// change later is shared); the part it returns writes them sorted by key.
func valueRecords[T any](typ string, m map[string]*T, clone func(*T) T, key func(*T) string) func(*bufio.Writer) error {
	vals := make([]T, 0, len(m))
	for _, v := range m {
		vals = append(vals, clone(v))
	}
	return func(w *bufio.Writer) error {
		sorted := make([]*T, len(vals))
		for i := range vals {
			sorted[i] = &vals[i]
		}
		sortBy(sorted, key)
		enc := json.NewEncoder(w) // straight into w: no garbage per record
		for _, v := range sorted {
			if err := enc.Encode(typedRecord[T]{Type: typ, Data: v}); err != nil {
				return fmt.Errorf("snapshot %s: %w", typ, err)
			}
		}
		return nil
	}
}

// typedRecord is a snapshotRecord whose data is encoded from a value.
type typedRecord[T any] struct {
	Type string `json:"type"`
	Data *T     `json:"data"`
}

// copyLines returns a part that writes each line of r (JSON) as a record.
func copyLines(typ string, r io.Reader) func(*bufio.Writer) error {
	return func(w *bufio.Writer) error {
		return eachAuditLine(r, func(line []byte) error { return writeSnapshotRecord(w, typ, line) })
	}
}

// writeSnapshotRecord writes a record line as json.Encoder writes a
// snapshotRecord whose Data is data (compact JSON, as json.Marshal makes).
func writeSnapshotRecord(w *bufio.Writer, typ string, data []byte) error {
	w.WriteString(`{"type":"` + typ + `","data":`)
	w.Write(data)
	_, err := w.WriteString("}\n")
	return err
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	start := time.Now()
	cw := &countingWriter{w: sink}
	w := bufio.NewWriterSize(cw, 64<<10)
	err := json.NewEncoder(w).Encode(s.header)
	for i := 0; err == nil && i < len(s.parts); i++ {
		err = s.parts[i](w)
	}
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return err
	}
	if s.log != nil {
		s.log.Info("state snapshot written", "index", s.header.Index, "bytes", cw.n,
			"copy_ms", s.took.Milliseconds(), "write_ms", time.Since(start).Milliseconds())
	}
	if s.persisted != nil {
		s.persisted(cw.n)
	}
	return nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n += int64(k)
	return k, err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (s *fsmSnapshot) Release() {}

// removedNode is the snapshot record of a node taken out of the cluster.
type removedNode struct {
	Node string    `json:"node"`
	At   time.Time `json:"at"`
}

// Restore implements raft.FSM: it replaces the state with a snapshot's.
//
// The state's index never moves backwards (install): readers waiting for
// an index they have already seen must not wait for ever. The next
// command sets the index to its raft index again.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	cr := &countingReader{r: rc}
	ns, err := readSnapshot(cr, f.spillDir)
	if err != nil {
		return err
	}
	if l := ns.Level(); l > releaseLevel {
		ns.close()
		return fmt.Errorf("restore: the snapshot's cluster level is %d and this node's release is of level %d: %w to the cluster's release", l, releaseLevel, errUpgradeNode)
	}
	f.markSnapshot(snapMark{entries: f.entries.Load(), applied: f.applied.Load(), size: cr.n})
	f.install(ns)
	f.onApply(f.state.Index(), 0)
	f.afterRestore()
	return nil
}

// afterRestore calls the fault tests' hook, if one is set.
func (f *FSM) afterRestore() {
	if hook := f.restored.Load(); hook != nil {
		(*hook)()
	}
}

// install puts ns's contents in the state's place (the State itself
// stays: readers hold it), with every view to recompute.
func (f *FSM) install(ns *State) {
	s := f.state
	s.mu.Lock()
	s.overlay, s.agencies, s.gateways, s.tokens, s.policies, s.addrInUse, s.members, s.people, s.requests, s.audit =
		ns.overlay, ns.agencies, ns.gateways, ns.tokens, ns.policies, ns.addrInUse, ns.members, ns.people, ns.requests, ns.audit
	s.level.Store(max(s.level.Load(), ns.level.Load())) // levels never go down
	s.removed = ns.removed
	s.certs, s.archive, s.issuers, s.keyOwner = ns.certs, ns.archive, ns.issuers, ns.keyOwner
	s.usedBelow = netip.Addr{}
	s.checkpoints = ns.checkpoints
	s.renewCall = ns.renewCall
	s.touchAll()
	s.setIndex(max(s.index, ns.index))
	s.mu.Unlock()
}

// readSnapshot decodes a snapshot into a fresh state, whose audit chain
// spills to spillDir; it is also how an uploaded backup is checked before
// it is handed to raft.
func readSnapshot(r io.Reader, spillDir string) (*State, error) {
	return readRecords(newRecordReader(r), spillDir)
}

func readRecords(rr *recordReader, spillDir string) (_ *State, err error) {
	var hdr snapshotHeader
	if err := rr.header(&hdr); err != nil {
		return nil, fmt.Errorf("restore: header: %w", err)
	}
	switch {
	case hdr.Format == snapshotFormat && hdr.Level == 0:
	case hdr.Format == snapshotFormatLevels && hdr.Level > 1 && hdr.Level <= math.MaxInt32:
	default:
		return nil, fmt.Errorf("restore: snapshot format %q (level %d), want %q, or %q with a level above 1", hdr.Format, hdr.Level, snapshotFormat, snapshotFormatLevels)
	}
	ns := newState(spillDir)
	ns.level.Store(int32(hdr.Level))
	ns.audit.buffered, ns.archive.buffered = true, true
	defer func() {
		ns.audit.buffered, ns.archive.buffered = false, false
		if err == nil {
			err = errors.Join(ns.audit.flush(), ns.archive.flush())
		}
		if err != nil {
			ns.close()
		}
	}()
	ns.index = hdr.Index
	for n := 1; ; n++ {
		var rec snapshotRecord
		byHand, err := rr.next(&rec)
		if err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("restore: record %d: %w", n, err)
		}
		err = ns.restoreRecord(rec)
		if err != nil && byHand && !json.Valid(rec.Data) {
			// Not a record on a line of its own after all: what failed
			// to decode changed nothing, and encoding/json reads it.
			if err := rr.again(&rec); err != nil {
				return nil, fmt.Errorf("restore: record %d: %w", n, err)
			}
			err = ns.restoreRecord(rec)
		}
		if err != nil {
			return nil, fmt.Errorf("restore: record %d (%s): %w", n, rec.Type, err)
		}
	}
	return ns, nil
}

// restoreRecord adds a snapshot's record to s. It must change nothing
// when rec.Data is not JSON (readRecords then reads the record again),
// and keep nothing of rec.Data, which may be the reader's buffer.
func (s *State) restoreRecord(rec snapshotRecord) error {
	switch rec.Type {
	case "network":
		var n snapshotNetwork
		if err := json.Unmarshal(rec.Data, &n); err != nil {
			return err
		}
		s.overlay = n.Overlay
	case "agency":
		a := new(api.Agency)
		if err := json.Unmarshal(rec.Data, a); err != nil {
			return err
		}
		s.agencies[a.Code] = a
	case "gateway":
		g := new(api.Gateway)
		if err := json.Unmarshal(rec.Data, g); err != nil {
			return err
		}
		s.gateways[g.ID] = g
		if g.PublicKey != "" {
			s.keyOwner[g.PublicKey] = g.ID
		}
		if g.OverlayIP.IsValid() {
			s.addrInUse[g.OverlayIP] = g.ID
		}
	case "token":
		t := new(tokenRecord)
		if err := json.Unmarshal(rec.Data, t); err != nil {
			return err
		}
		s.tokens[t.Hash] = t
	case "policy":
		var p api.Policy
		if err := json.Unmarshal(rec.Data, &p); err != nil {
			return err
		}
		s.policies = append(s.policies, p)
	case "member":
		m := new(api.Member)
		if err := json.Unmarshal(rec.Data, m); err != nil {
			return err
		}
		s.members[m.Node] = m
	case "removed-node":
		var r removedNode
		if err := json.Unmarshal(rec.Data, &r); err != nil {
			return err
		}
		s.removed[r.Node] = r.At
	case "person":
		p := new(api.Person)
		if err := json.Unmarshal(rec.Data, p); err != nil {
			return err
		}
		s.people[p.Name] = p
	case "request":
		r := new(request)
		if err := json.Unmarshal(rec.Data, r); err != nil {
			return err
		}
		s.requests[r.ID] = r
	case "cert":
		c := new(api.Certificate)
		if err := json.Unmarshal(rec.Data, c); err != nil {
			return err
		}
		if archived, err := s.archive.has(c.Serial); err != nil || archived {
			return cmp.Or(err, fmt.Errorf("certificate %s is also archived", c.Serial))
		}
		s.certs[c.Serial] = c
	case "archived":
		c := new(api.Certificate)
		if err := json.Unmarshal(rec.Data, c); err != nil {
			return err
		}
		if normSerial(c.Serial) != c.Serial {
			return fmt.Errorf("archived certificate serial %q: want lowercase hex without leading zeros", c.Serial)
		}
		if archived, err := s.archive.has(c.Serial); err != nil || archived || s.certs[c.Serial] != nil {
			return cmp.Or(err, fmt.Errorf("certificate %s is archived twice, or also in the inventory", c.Serial))
		}
		return s.archive.addLine(c, rec.Data)
	case "issuer":
		r := new(issuerRecord)
		if err := json.Unmarshal(rec.Data, r); err != nil {
			return err
		}
		s.issuers[r.Issuer] = r
	case "renew-call":
		c := new(api.RenewCall)
		if err := json.Unmarshal(rec.Data, c); err != nil {
			return err
		}
		s.renewCall = c
	case "checkpoint":
		var c api.AuditCheckpoint
		if err := json.Unmarshal(rec.Data, &c); err != nil {
			return err
		}
		s.checkpoints = append(s.checkpoints, c)
	case "audit":
		var e api.AuditEntry
		if err := json.Unmarshal(rec.Data, &e); err != nil {
			return err
		}
		if e.Seq != s.audit.len()+1 || e.Prev != s.audit.head.Hash || e.ComputeHash() != e.Hash {
			return fmt.Errorf("audit entry %d does not extend the chain", e.Seq)
		}
		return s.audit.append(e)
	default:
		return fmt.Errorf("unknown record type %q", rec.Type)
	}
	return nil
}

func (s *State) agenciesSorted() []*api.Agency {
	out := make([]*api.Agency, 0, len(s.agencies))
	for _, a := range s.agencies {
		out = append(out, a)
	}
	sortBy(out, func(a *api.Agency) string { return a.Code })
	return out
}

func (s *State) membersSorted() []*api.Member {
	out := make([]*api.Member, 0, len(s.members))
	for _, m := range s.members {
		out = append(out, m)
	}
	sortBy(out, func(m *api.Member) string { return m.Node })
	return out
}

func (s *State) gatewaysSorted() []*api.Gateway {
	out := make([]*api.Gateway, 0, len(s.gateways))
	for _, g := range s.gateways {
		out = append(out, g)
	}
	sortBy(out, func(g *api.Gateway) string { return g.ID })
	return out
}
