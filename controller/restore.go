package controller

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/raft"

	"github.com/govnet/govnet/agency"
	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/policy"
)

// A restore rolls the network's registry back to a backup, never its
// history. What an officer restores to undo a mistake is configuration:
// the agencies, the gateways registered since (decommissioned, their
// LANs free), the agency each gateway belongs to, and the policy. What
// the cluster has done since the backup stays done, because the world
// outside the cluster remembers it: the audit chain and its signed checkpoints, the
// certificate inventory with every revocation (a revoked certificate
// would otherwise be good again on the CRL and at OCSP), the issuers'
// CRL numbers, the policy versions published, enrollments and renewals,
// people, tokens, four-eyes requests and the cluster's membership.
//
// A restore is a command (CmdBackupRollBack) that carries what it takes
// from the backup (rollback): each node, as it applies it, checks it
// against its own state (checkRollBack), then rolls it back into the
// state (applyRollBack) and appends the restore's audit entry. The restore and
// its entry are one step, and a quorum holds it before any node applies
// it.
//
// The backup of a lost cluster restores into a new one (recoverInto): its
// state and history become the new cluster's, through raft.Restore, on
// the new cluster's first node before the others join (recoverBackup).

// restoreInfo says who restored which backup.
type restoreInfo struct {
	Actor, Role  string
	At           time.Time
	BackupSHA256 string // hex, of the backup file
	RequestID    string // the approved restore request, in four-eyes mode
	fourEyes     bool   // the restore needs an approved request (CmdBackupRollBack)
}

// ActionRestore is the audit chain's action for a backup restore.
const ActionRestore = "backup-restore"

// restoreBackup restores bk (a backup's state, as readSnapshot read it
// once checkBackup had checked its signature line) on every node, and
// closes bk. It runs on the leader.
//
// A backup of this cluster is restored by a command (CmdBackupRollBack,
// carrying what the restore takes from it), which every node applies like
// any other once a quorum has it. A lost cluster's backup is recovered
// into a new cluster of one node (recoverBackup).
func (n *Node) restoreBackup(ctx context.Context, bk *State, r restoreInfo) error {
	// Decided on a state that holds every command committed before: a
	// leader just elected may not have applied the backup's last entry
	// yet.
	_, err := n.barrier(ctx)
	extends := false
	rb := rollbackOf(bk)
	if err == nil {
		if extends, err = n.State().extends(rb); err != nil {
			err = fmt.Errorf("this node's audit chain: %w", err)
		}
	}
	if err == nil && !extends {
		return n.recoverBackup(ctx, bk, r)
	}
	bk.close()
	if err != nil {
		return err
	}
	req := &BackupRestoreRequest{Meta: Meta{Actor: r.Actor, At: r.At.UTC()}, Role: r.Role, BackupSHA256: r.BackupSHA256,
		FourEyes: n.cfg.FourEyes, RollBack: rb}
	b, err := req.encode(CmdBackupRollBack)
	if err != nil {
		return err
	}
	last, _ := n.State().AuditHead() // Seq is the chain's length
	seq := last.Seq
	return n.settle(ctx, CmdBackupRollBack, func() error {
		_, verdict, err := n.applyLocal(ctx, CmdBackupRollBack, b)
		if err != nil {
			return err
		}
		return verdict
	}, func(s *State) bool { return s.restoredSince(seq, req) })
}

// recoverBackup installs bk, another cluster's backup, merged into the
// current state (recoverInto), and closes bk. It runs on the leader, with
// this node's writes held from the merge until raft has the result, so
// that no command committed in between is lost; the backup was decoded
// before, with writes flowing. raft.Restore installs the result on the
// leader before any follower has it: were the leader lost in between,
// it would keep a state the others never committed (and refuse their
// log from then on). A cluster of one node commits alone, so a recovery
// is done there, before the other nodes join.
func (n *Node) recoverBackup(ctx context.Context, bk *State, r restoreInfo) error {
	defer bk.close()
	if err := n.singleVoter(); err != nil {
		return err
	}
	if l := bk.Level(); l > releaseLevel {
		return fmt.Errorf("%w: the backup is of a cluster at level %d and this node's release is of level %d: recover it with a release of level %d or later",
			ErrConflict, l, releaseLevel, l)
	}
	n.applyGate.Lock()
	defer n.applyGate.Unlock()
	if _, err := n.barrier(ctx); err != nil {
		return err
	}
	if n.cfg.FourEyes {
		// Decided here, on the state every node will have: the node the
		// officer called checked it too, but may lag (an approval this
		// leader has seen spent looks unspent there).
		id, ok := n.State().approvedRestore(r.BackupSHA256, r.At)
		if !ok {
			return notApproved(r.BackupSHA256)
		}
		r.RequestID = id
	}
	merged, index, err := n.mergedSnapshot(bk, r)
	if err != nil {
		return err
	}
	// Again, as close to the restore as can be: a node may have joined
	// meanwhile (a join's membership record waits for the gate, but
	// not a raft configuration change already under way).
	if err := n.singleVoter(); err != nil {
		return err
	}
	// raft gives the snapshot an index above both this one and its log's
	// last: the state's index stays below every command after it (views
	// and reads are stamped with it), even when the backup's is higher.
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Size: int64(len(merged)), Index: index}
	if err := n.raft.Restore(meta, bytes.NewReader(merged), timeoutWithin(ctx, api.RestoreTimeout)); err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return ErrNotLeader
		}
		return fmt.Errorf("raft restore: %w", err)
	}
	return nil
}

// notApproved is the refusal of a restore that four-eyes mode does not
// allow.
func notApproved(sum string) error {
	return fmt.Errorf("%w: four-eyes: restoring backup %s needs a restore request for it (govnetctl request restore FILE) that another officer approved within the last %s and that no restore has used",
		ErrForbidden, sum, api.RestoreApprovalTTL)
}

// singleVoter refuses a recovery in a cluster of more than one node
// (voters, or nonvoters a leader may make voters).
func (n *Node) singleVoter() error {
	cfg := n.raft.GetConfiguration()
	if err := cfg.Error(); err != nil {
		return fmt.Errorf("raft configuration: %w", err)
	}
	if nodes := len(cfg.Configuration().Servers); nodes != 1 {
		return fmt.Errorf("%w: the backup is not of this cluster (its audit chain is not the beginning of this one's); another cluster's backup is recovered only into a new cluster of a single node: restore it on the first node, then join the others (this cluster has %d nodes)", ErrConflict, nodes)
	}
	return nil
}

// BackupRestoreRequest restores a backup of this cluster: who restored
// which backup, and the backup's state as its file holds it. Every node
// checks the backup against its own state and rolls it back into it as
// it applies the command (FSM.applyBackupRestore).
type BackupRestoreRequest struct {
	Meta
	Role         string `json:"role,omitempty"`
	BackupSHA256 string `json:"backup_sha256"` // hex, of the backup file
	// FourEyes: the restore needs a restore request for this backup that
	// another officer approved, and spends it (the leader's
	// configuration decides).
	FourEyes bool `json:"four_eyes,omitempty"`
	// What the command carries: the backup's state (a snapshot, up to
	// maxSnapshotBody) as its file holds it, in a CmdBackupRestore of an
	// earlier release; what the restore takes of it, in a
	// CmdBackupRollBack.
	State    []byte    `json:"-"`
	RollBack *rollback `json:"-"`
}

// encode lays the command of type t (CmdBackupRestore, or
// CmdBackupRollBack) out as its type, the length of its JSON head
// (uvarint), the head, and what it carries compressed (flate, fastest):
// JSON shrinks about four times, and so does what raft writes to every
// node's log and sends to every follower.
func (r *BackupRestoreRequest) encode(t CommandType) ([]byte, error) {
	head, err := json.Marshal(r)
	body := r.State
	if err == nil && t == CmdBackupRollBack {
		body, err = json.Marshal(r.RollBack)
	}
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", t, err)
	}
	var b bytes.Buffer
	b.Grow(len(body) / 3)
	b.WriteByte(byte(t))
	b.Write(binary.AppendUvarint(nil, uint64(len(head))))
	b.Write(head)
	zw, err := flate.NewWriter(&b, flate.BestSpeed)
	if err == nil {
		_, err = zw.Write(body)
	}
	if err == nil {
		err = zw.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", t, err)
	}
	return b.Bytes(), nil
}

// decodeBackupRestore reads the body encode wrote after the type: the
// request, without what it carries, and a reader of that.
func decodeBackupRestore(body []byte) (*BackupRestoreRequest, io.Reader, error) {
	n, k := binary.Uvarint(body)
	if k <= 0 || n > uint64(len(body)-k) {
		return nil, nil, fmt.Errorf("%w: decode command: no head of the length it gives (%d bytes) in a body of %d", ErrBadRequest, n, len(body))
	}
	r := new(BackupRestoreRequest)
	if err := json.Unmarshal(body[k:k+int(n)], r); err != nil {
		return nil, nil, fmt.Errorf("%w: decode command: %v", ErrBadRequest, err)
	}
	return r, flate.NewReader(bytes.NewReader(body[k+int(n):])), nil
}

// applyBackupRestore applies a restore (t: CmdBackupRollBack, or
// CmdBackupRestore) committed at index: the backup is checked against
// the state (checkRollBack) with readers flowing, then rolled back into
// it (applyRollBack) under the state's lock. A backup that does not fit
// is refused alike on every node and changes nothing. A failure of this
// node's own (its disk) stops the node: the others applied the restore,
// and its state would part from theirs.
func (f *FSM) applyBackupRestore(t CommandType, index uint64, body []byte) ApplyResult {
	s := f.state
	start := time.Now()
	bk, info, err := f.readRestore(t, index, body)
	read := time.Since(start)
	if err == nil {
		err = f.checkRestore(index, bk, &info)
	}
	if err != nil {
		s.mu.Lock()
		s.setIndex(index)
		s.mu.Unlock()
		return ApplyResult{Index: index, Err: err}
	}
	checked := time.Since(start)
	s.mu.Lock()
	s.applying = index
	if err := applyRollBack(s, bk, info, index); err != nil {
		s.mu.Unlock()
		panic(fmt.Sprintf("raft index %d: %v", index, err))
	}
	s.touchAll()
	s.setIndex(index)
	s.mu.Unlock()
	f.onApply(index, t)
	if f.log != nil {
		f.log.Warn("backup restored", "raft_index", index, "command_bytes", len(body), "read_backup_ms", read.Milliseconds(),
			"check_ms", (checked - read).Milliseconds(), "roll_back_ms", (time.Since(start) - checked).Milliseconds())
	}
	f.afterRestore()
	return ApplyResult{Index: index}
}

// readRestore decodes a restore's body: what it takes from the backup,
// and who restored it. A CmdBackupRestore (an earlier release's) carries
// the backup's whole state.
func (f *FSM) readRestore(t CommandType, index uint64, body []byte) (*rollback, restoreInfo, error) {
	r, carried, err := decodeBackupRestore(body)
	if err != nil {
		return nil, restoreInfo{}, err
	}
	var rb *rollback
	if t == CmdBackupRollBack {
		rb, err = readRollback(carried)
	} else {
		var bk *State
		bk, err = readSnapshot(newBoundedReader(carried, maxSnapshotBody), f.spillDir)
		if errors.Is(err, errSpillIO) {
			panic(fmt.Sprintf("raft index %d: the backup: %v", index, err))
		}
		if err == nil {
			rb = rollbackOf(bk)
			bk.close()
		}
	}
	if err != nil {
		return nil, restoreInfo{}, fmt.Errorf("%w: the backup: %w", ErrBadRequest, err)
	}
	return rb, restoreInfo{Actor: r.Actor, Role: r.Role, At: r.At, BackupSHA256: r.BackupSHA256, fourEyes: r.FourEyes}, nil
}

// checkRestore refuses a restore of bk that the state cannot take, and
// names in info the approved request a four-eyes restore spends. It
// changes nothing; only the FSM's goroutine writes the state, so what it
// read still holds when the restore takes the lock.
func (f *FSM) checkRestore(index uint64, bk *rollback, info *restoreInfo) error {
	s := f.state
	if info.fourEyes {
		id, ok := s.approvedRestore(info.BackupSHA256, info.At)
		if !ok {
			return notApproved(info.BackupSHA256)
		}
		info.RequestID = id
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := checkBackupFits(s, bk); err != nil {
		return err
	}
	extends, err := chainExtends(s, bk)
	if err != nil {
		panic(fmt.Sprintf("raft index %d: this node's audit chain: %v", index, err))
	}
	if !extends {
		return fmt.Errorf("%w: the backup's audit chain is not the beginning of this cluster's: it is not a backup of this cluster (another cluster's backup is recovered into a new cluster of one node)", ErrConflict)
	}
	return checkRollBack(s, bk)
}

// boundedReader reads up to n bytes of r and fails past them: a backup's
// state, decompressed, is at most what an upload may be, and a command
// past that is refused rather than read to the end of memory (or cut
// short: the format has no end, and a prefix still reads).
type boundedReader struct {
	r     io.Reader
	n     int64 // what may still be read
	limit int64
}

func newBoundedReader(r io.Reader, limit int64) *boundedReader {
	return &boundedReader{r: r, n: limit, limit: limit}
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.n <= 0 {
		var one [1]byte
		k, err := b.r.Read(one[:])
		if k > 0 {
			return 0, fmt.Errorf("the backup's state is over %d bytes", b.limit)
		}
		return 0, err
	}
	p = p[:min(int64(len(p)), b.n)]
	k, err := b.r.Read(p)
	b.n -= int64(k)
	return k, err
}

// extends says whether s's audit chain extends bk's: bk is a backup of
// this cluster.
func (s *State) extends(bk *rollback) (bool, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return chainExtends(s, bk)
}

// restoredSince says whether the chain's entries after seq record the
// restore r.
func (s *State) restoredSince(seq uint64, r *BackupRestoreRequest) bool {
	entries, err := s.Audit(seq)
	return err == nil && slices.ContainsFunc(entries, func(e api.AuditEntry) bool {
		return e.Action == ActionRestore && e.RequestSHA256 == r.BackupSHA256 && e.Actor == r.Actor && e.At.Equal(r.At)
	})
}

// mergedSnapshot returns the snapshot that results from restoring bk
// into a copy of the current state (mergeBackup).
func (n *Node) mergedSnapshot(bk *State, r restoreInfo) ([]byte, uint64, error) {
	m, err := n.fsm.copyState()
	if err != nil {
		return nil, 0, fmt.Errorf("copy of the current state: %w", err)
	}
	return mergeInto(m, bk, r)
}

// copyState returns a copy of the state, read back as it is written,
// through a pipe: encoding and decoding run side by side.
func (f *FSM) copyState() (*State, error) {
	cur, err := f.snapshot()
	if err != nil {
		return nil, err
	}
	cur.log = nil // not a raft snapshot: nothing to log
	pr, pw := io.Pipe()
	persisted := make(chan error, 1)
	go func() {
		err := cur.Persist(&pipeSnapshotSink{pw})
		pw.CloseWithError(err) // nil: the reader sees the end
		persisted <- err
	}()
	m, err := readSnapshot(pr, f.spillDir)
	pr.CloseWithError(errCopyNotRead) // a writer still writing stops
	switch perr := <-persisted; {
	case perr == nil:
	case err == nil:
		m.close()
		err = perr
	case !errors.Is(perr, errCopyNotRead):
		err = perr // the writer failed first: the reader saw "snapshot cancelled"
	}
	return m, err
}

// errCopyNotRead stops the writing of a state's copy that its reader gave up.
var errCopyNotRead = errors.New("the copy of the state was not read to its end")

// pipeSnapshotSink hands a snapshot to the pipe's reader.
type pipeSnapshotSink struct{ *io.PipeWriter }

func (pipeSnapshotSink) ID() string      { return "pipe" }
func (s pipeSnapshotSink) Cancel() error { return s.CloseWithError(errors.New("snapshot cancelled")) }
func (pipeSnapshotSink) Close() error    { return nil } // the writer's goroutine closes the pipe

// mergeSnapshots is mergeBackup on snapshots: cur, the current state's,
// and backup's; their audit chains spill to spillDir while it runs. It
// returns the merged snapshot and its index.
func mergeSnapshots(cur, backup []byte, spillDir string, r restoreInfo) ([]byte, uint64, error) {
	bk, err := readSnapshot(bytes.NewReader(backup), spillDir)
	if err != nil {
		return nil, 0, err
	}
	defer bk.close()
	m, err := readSnapshot(bytes.NewReader(cur), spillDir)
	if err != nil {
		return nil, 0, fmt.Errorf("copy of the current state: %w", err)
	}
	return mergeInto(m, bk, r)
}

// mergeInto is mergeSnapshots with both states decoded: m, the current
// state's copy, which it closes, and bk, which it changes.
func mergeInto(m, bk *State, r restoreInfo) ([]byte, uint64, error) {
	defer m.close()
	res, err := mergeBackup(m, bk, r)
	if err != nil {
		return nil, 0, err
	}
	snap, err := snapshotOf(res)
	if err != nil {
		return nil, 0, err
	}
	var out memSnapshotSink
	if err := snap.Persist(&out); err != nil {
		return nil, 0, err
	}
	return out.Bytes(), res.index, nil
}

// mergeBackup returns the state a restore of bk into m, a copy of the
// current state, leaves: rollBack for a backup of this cluster (m's
// audit chain extends bk's), recoverInto for another cluster's backup
// restored into a new one (newCluster). Any other backup, or one of
// another network (another overlay), is refused. It changes m and bk.
func mergeBackup(m, bk *State, r restoreInfo) (*State, error) {
	rb := rollbackOf(bk)
	if err := checkBackupFits(m, rb); err != nil {
		return nil, err
	}
	if extends, err := chainExtends(m, rb); err != nil {
		return nil, err
	} else if extends {
		return m, rollBack(m, rb, r, m.index+1)
	}
	fresh, err := newCluster(m)
	if err != nil {
		return nil, err
	}
	if !fresh {
		return nil, fmt.Errorf("%w: the backup's audit chain is not the beginning of this cluster's: it is not a backup of this cluster, and another cluster's backup restores only into a new cluster, one that never had a gateway or a restore", ErrConflict)
	}
	return bk, recoverInto(m, bk, r)
}

// checkBackupFits refuses a backup that cannot be restored into m at
// all. The format has no end: a file cut short still reads. What a backup
// of a running cluster always holds is checked here.
func checkBackupFits(m *State, bk *rollback) error {
	switch {
	case m.overlay.IsValid() && !bk.Overlay.IsValid():
		return fmt.Errorf("%w: the backup holds no network (overlay): a file cut short?", ErrBadRequest)
	case m.overlay.IsValid() && bk.Overlay != m.overlay:
		return fmt.Errorf("%w: the backup is of another network (overlay %s; this one's is %s)", ErrConflict, bk.Overlay, m.overlay)
	case bk.AuditLen == 0 && m.audit.len() > 0:
		return fmt.Errorf("%w: the backup holds no audit chain: a file cut short?", ErrBadRequest)
	}
	return checkRegistry(bk)
}

// checkRegistry refuses a backup whose registry no command could have
// made: an agency whose level is not its code's, whose parent is not
// registered or not above it, a gateway of an unregistered agency. The
// backup's registry goes into every view unchecked otherwise (a district
// recorded as a province joins the provinces' groups).
func checkRegistry(bk *rollback) error {
	var errs []error
	for i := range bk.Agencies {
		a := &bk.Agencies[i]
		code := a.Code
		c, err := agency.Parse(code)
		if err != nil {
			errs = append(errs, fmt.Errorf("agency %q: not a valid code", code))
			continue
		}
		if a.Level != c.Level().String() {
			errs = append(errs, fmt.Errorf("agency %s: level %q, its code's is %s", code, a.Level, c.Level()))
		}
		if a.Parent != "" {
			p, err := agency.Parse(a.Parent)
			if _, ok := bk.agencies[a.Parent]; !ok || err != nil || p.Depth() >= c.Depth() {
				errs = append(errs, fmt.Errorf("agency %s: parent %s is not a registered agency above it", code, a.Parent))
			}
		}
	}
	for _, g := range bk.Gateways {
		// A decommissioned gateway may belong to an agency a restore
		// took back (it was registered after that restore's backup).
		if _, ok := bk.agencies[g.Agency]; !ok && g.Status != api.StatusDecommissioned {
			errs = append(errs, fmt.Errorf("gateway %s: agency %s is not registered", g.ID, g.Agency))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: the backup's registry is not one this cluster could have held (an altered backup?): %w", ErrBadRequest, errors.Join(errs...))
	}
	return nil
}

// errFound stops a scan of the audit chain.
var errFound = errors.New("found")

// newCluster says whether m's cluster is new: it holds no gateway, and
// its audit chain records none and no restore.
func newCluster(m *State) (bool, error) {
	if len(m.gateways) > 0 {
		return false, nil
	}
	err := eachAuditLine(m.audit.lines(0), func(line []byte) error {
		var e struct {
			Action string `json:"action"`
		}
		if err := json.Unmarshal(line, &e); err != nil {
			return err
		}
		switch e.Action {
		case CmdGatewayAdd.String(), CmdGatewayRegister.String(), ActionRestore, CmdStateRestored.String():
			return errFound
		}
		return nil
	})
	if errors.Is(err, errFound) {
		return false, nil
	}
	return err == nil, err
}

// chainExtends says whether m's audit chain extends bk's (bk is a backup
// of m's cluster).
// An error is m's: its chain could not be read.
func chainExtends(m *State, bk *rollback) (bool, error) {
	k := bk.AuditLen
	if k == 0 || k > m.audit.len() {
		return k == 0, nil
	}
	e, err := m.audit.entry(k)
	if err != nil {
		return false, err
	}
	return e.Hash == bk.AuditHead, nil
}

// rollBack is mergeBackup for a backup of m's own cluster, into m,
// deterministically:
//
//   - the agencies are the backup's;
//   - a gateway registered since the backup is decommissioned by the
//     restorer: its valid certificates revoked (cessationOfOperation),
//     its unused tokens gone, its pending requests rejected, its LANs
//     free, its id kept;
//   - a gateway the backup holds keeps what it became since (enrollment,
//     keys, endpoint, address, certificates, revocation or
//     decommissioning) and takes back its agency (its name and LANs
//     never change: a backup that says otherwise is refused);
//   - the backup's policy is published again, as the next version, if it
//     is not the current one;
//   - the rest is kept (see the comment at the top of this file), and the
//     restore's entry is appended to the audit chain.
//
// index is the restore's place in the state's history.
func rollBack(m *State, bk *rollback, r restoreInfo, index uint64) error {
	if err := checkRollBack(m, bk); err != nil {
		return err
	}
	return applyRollBack(m, bk, r, index)
}

// checkRollBack refuses a backup of m's cluster that rollBack cannot
// restore into m, and changes nothing.
func checkRollBack(m *State, bk *rollback) error {
	for _, id := range slices.Sorted(maps.Keys(m.gateways)) {
		// A gateway's LANs never change once registered: a backup that
		// says otherwise was altered (its LANs would go into every peer's
		// firewall unchecked).
		if old, ok := bk.gateways[id]; ok && !slices.Equal(m.gateways[id].LANs, old.LANs) {
			return fmt.Errorf("%w: the backup gives gateway %s the LANs %v, which it does not have (%v): an altered backup?", ErrBadRequest, id, old.LANs, m.gateways[id].LANs)
		}
	}
	for _, g := range bk.Gateways {
		if _, ok := m.gateways[g.ID]; !ok { // gateways are never deleted
			return fmt.Errorf("%w: the backup holds gateway %s, which this cluster never had", ErrConflict, g.ID)
		}
	}
	var last *api.Policy // the policy after the restore
	if l := len(m.policies); l > 0 {
		last = &m.policies[l-1]
	}
	if bk.Policy != nil {
		want := bk.Policy.Source
		// Policies are never taken back: the backup's was published here.
		if v := bk.Policy.Version; v == 0 || v > uint64(len(m.policies)) || m.policies[v-1].Source != want {
			return fmt.Errorf("%w: the backup's policy (version %d) is not the one this cluster published as that version: an altered backup?", ErrBadRequest, v)
		}
		if last.Source != want {
			last = &api.Policy{Version: last.Version + 1, Source: want}
		}
	}
	// The policy must still compile against the registry the restore
	// leaves (the current one, kept when the backup has none, may name a
	// gateway the backup does not hold): otherwise no view could be computed.
	if last != nil {
		p, err := policy.Parse(fmt.Sprintf("policy-v%d.yaml", last.Version), []byte(last.Source))
		if err == nil {
			_, err = p.NewCompiler(rolledBackRegistry(m, bk))
		}
		if err != nil {
			return fmt.Errorf("%w: after this restore the policy (version %d) would not compile against the restored registry: %w; publish a policy that fits it first", ErrConflict, last.Version, err)
		}
	}
	return nil
}

// rolledBackRegistry is the registry applyRollBack leaves: the backup's
// agencies, each gateway with the backup's agency, the gateways
// registered since decommissioned.
func rolledBackRegistry(m *State, bk *rollback) *policy.Registry {
	gws := make([]api.Gateway, 0, len(m.gateways))
	for _, g := range m.gatewaysSorted() {
		c := copyGateway(g)
		if old, ok := bk.gateways[g.ID]; ok {
			c.Agency = old.Agency
		} else {
			c.Status = api.StatusDecommissioned
		}
		gws = append(gws, c)
	}
	return &policy.Registry{Agencies: slices.Clone(bk.Agencies), Gateways: gws}
}

// applyRollBack restores bk into m once checkRollBack accepted it; it
// fails only when m's audit chain cannot be written.
func applyRollBack(m *State, bk *rollback, r restoreInfo, index uint64) error {
	if !m.overlay.IsValid() {
		m.overlay = bk.Overlay
	}
	m.agencies = bk.agencies
	var added []string // registered since the backup
	for _, id := range slices.Sorted(maps.Keys(m.gateways)) {
		if old, ok := bk.gateways[id]; ok {
			m.gateways[id].Agency = old.Agency
		} else {
			added = append(added, id)
		}
	}
	// The gateways registered since are decommissioned, as an officer
	// would: their certificates revoked, out of every view, their LANs
	// free, their unused tokens gone, their pending requests rejected,
	// their ids kept (ids are never given again, so nothing issued for
	// one can apply to another). One pass over the inventory, the tokens
	// and the requests for all of them: one per gateway held the leader's
	// writes for 6 s at 20,000 gateways, with 300 registered since.
	leaving := map[string]bool{}
	for _, id := range added {
		if m.gateways[id].Status != api.StatusDecommissioned {
			leaving[id] = true
		}
	}
	certsOf := m.validGatewayCerts(leaving)
	for _, id := range added {
		if leaving[id] {
			m.revoke(certsOf[id], "", int(ca.ReasonCessationOfOperation), r.At, r.Actor, index)
			m.gateways[id].Status = api.StatusDecommissioned
		}
	}
	for h, t := range m.tokens {
		if leaving[t.Gateway] && !t.Used {
			delete(m.tokens, h)
		}
	}
	for _, q := range m.requests {
		if leaving[q.Gateway] && q.Status == api.RequestPending {
			q.Status, q.Approver, q.Decided = api.RequestRejected, r.Actor, r.At
		}
	}
	if bk.Policy != nil {
		if want := bk.Policy.Source; m.policies[len(m.policies)-1].Source != want {
			m.publish(want, r.Actor, r.At)
		}
	}
	return appendRestoreEntry(m, index, "sha256:"+r.BackupSHA256, r)
}

// recoverInto is mergeBackup for the backup of a lost cluster restored
// into m, a new one (newCluster): the backup's state and history
// become the cluster's, and what the new cluster holds of its own is kept
// beside them: its membership, its nodes' issuers and certificates, and
// the people, tokens and requests it registered (a person in both keeps
// the credentials the new cluster gave them). Its audit chain so far (its
// initialisation) gives way to the backup's; the restore's entry names
// its length and head.
func recoverInto(m, bk *State, r restoreInfo) error {
	bk.members, bk.removed = m.members, m.removed
	bk.level.Store(int32(max(m.Level(), bk.Level()))) // the new cluster's nodes run its release
	for name, p := range m.people {
		bk.people[name] = p
	}
	for id, ir := range m.issuers {
		if bk.issuers[id] == nil {
			bk.issuers[id] = ir
		}
	}
	for serial, c := range m.certs {
		if archived, err := bk.archive.has(serial); err != nil {
			return err
		} else if bk.certs[serial] == nil && !archived {
			bk.certs[serial] = c
		}
	}
	for h, t := range m.tokens {
		if bk.tokens[h] == nil {
			bk.tokens[h] = t
		}
	}
	for id, q := range m.requests {
		if bk.requests[id] == nil {
			bk.requests[id] = q
		}
	}
	return appendRestoreEntry(bk, max(m.index, bk.index)+recoveryIndexGap, fmt.Sprintf("sha256:%s replaces:%d:%s", r.BackupSHA256, m.audit.len(), m.audit.head.Hash), r)
}

// recoveryIndexGap is how far a recovery moves the state's index past the
// backup's. The lost cluster went on after its backup was saved, and its
// gateways hold views stamped with its later indexes: a stream resumes
// from the index of the view the gateway holds, and gets nothing until
// the cluster's index passes it. So the recovered cluster starts where
// the lost one cannot have reached (2^40 commands: centuries at a hundred
// a second), and every gateway gets the recovered cluster's view at once.
// raft leaves a hole in its log at the restore's snapshot in any case.
const recoveryIndexGap = 1 << 40

// appendRestoreEntry appends the restore's entry to s's chain, at index,
// its object naming the approved request it was done under, if any, which
// it spends.
func appendRestoreEntry(s *State, index uint64, object string, r restoreInfo) error {
	if q := s.requests[r.RequestID]; q != nil {
		q.Restored = index
	}
	if r.RequestID != "" {
		object += " request:" + r.RequestID
	}
	if err := s.appendAudit(api.AuditEntry{RaftIndex: index, At: r.At.UTC(), Actor: r.Actor, Role: r.Role,
		Action: ActionRestore, Object: object, RequestSHA256: r.BackupSHA256}); err != nil {
		return err
	}
	s.index = index
	return nil
}

// memSnapshotSink keeps a snapshot in memory.
type memSnapshotSink struct{ bytes.Buffer }

func (*memSnapshotSink) ID() string    { return "memory" }
func (*memSnapshotSink) Cancel() error { return nil }
func (*memSnapshotSink) Close() error  { return nil }
