package controller

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/govnet/govnet/api"
)

// The certificate archive: certificates that expired some time ago leave
// the in-memory inventory for a file, where every node still answers for
// them (`cert show`, OCSP, `cert list --archived`).
//
// Every renewal adds a certificate to the inventory, and nothing else
// ever removes one: at 20,000 gateways renewing at two thirds of 24 h
// that is 30,000 records a day, and a network-wide re-issue 20,000 more.
// A node that runs for a year would hold ten million records, 6 GiB of
// heap. The leader therefore archives
// (CmdCertArchive) the certificates that expired more than
// cert_archive_after ago, except a gateway's or a person's current one,
// which the registry still names. The archive is part of the replicated
// state like the audit chain, and kept the same way (spillFile): one JSON
// line per certificate on disk, in memory only an index of ~35 bytes a
// certificate, where the inventory holds ~555 (BenchmarkCertArchive).

// certArchive holds the archived certificates. Guarded by the State's lock.
type certArchive struct {
	spillFile
	seed maphash.Seed
	// at maps the hash of a serial to where its line is (archiveLoc);
	// a serial whose hash is taken by another is in more instead.
	at   map[uint64]uint64
	more map[string]uint64
	n    int // certificates archived
	// What the metrics count of the archived: issued by profile and
	// revoked by reason (their counters must not fall when a certificate
	// is archived).
	issued, revoked map[string]uint64
}

func newCertArchive(dir string) *certArchive {
	return &certArchive{
		spillFile: spillFile{dir: dir, pattern: "certs-*.jsonl"},
		seed:      maphash.MakeSeed(),
		at:        map[uint64]uint64{},
		more:      map[string]uint64{},
		issued:    map[string]uint64{},
		revoked:   map[string]uint64{},
	}
}

// A line's location packs its offset (40 bits: up to 1 TiB of archive)
// and its length (24 bits: a line is about 0.7 KiB, and a request body,
// which bounds a certificate record, is at most 1 MiB).
const archiveLenBits = 24

func archiveLoc(off int64, n int) (uint64, error) {
	if n >= 1<<archiveLenBits || off >= 1<<(64-archiveLenBits) {
		return 0, fmt.Errorf("certificate archive: a line of %d bytes at %d does not fit its index", n, off)
	}
	return uint64(off)<<archiveLenBits | uint64(n), nil
}

func (a *certArchive) len() int { return a.n }

// lookup returns the archived certificate with serial (normalised).
func (a *certArchive) lookup(serial string) (*api.Certificate, bool, error) {
	loc, ok := a.more[serial]
	if !ok {
		if loc, ok = a.at[maphash.String(a.seed, serial)]; !ok {
			return nil, false, nil
		}
	}
	b, err := a.read(int64(loc>>archiveLenBits), int(loc&(1<<archiveLenBits-1)))
	if err != nil {
		return nil, false, fmt.Errorf("certificate archive: %w", err)
	}
	c := new(api.Certificate)
	if err := json.Unmarshal(b, c); err != nil {
		return nil, false, fmt.Errorf("certificate archive: line at %d: %w", loc>>archiveLenBits, err)
	}
	c.Archived = true
	if c.Serial != serial {
		return nil, false, nil // another serial with the same hash
	}
	return c, true, nil
}

// has says whether serial is archived.
func (a *certArchive) has(serial string) (bool, error) {
	_, ok, err := a.lookup(serial)
	return ok, err
}

// add appends certificates (marked archived) in one write: all are
// archived, or on an error none is.
func (a *certArchive) add(certs []*api.Certificate) error {
	var buf []byte
	ends := make([]int, len(certs))
	for i, c := range certs {
		cc := *c
		cc.Archived = true
		b, err := json.Marshal(&cc)
		if err != nil {
			return fmt.Errorf("certificate archive: %s: %w", c.Serial, err)
		}
		buf = append(append(buf, b...), '\n')
		ends[i] = len(buf)
	}
	return a.writeLines(certs, buf, ends)
}

// addLine appends one certificate as line, its JSON encoding (a
// snapshot's line, which restore has decoded into c): no encoding again.
func (a *certArchive) addLine(c *api.Certificate, line []byte) error {
	if bytes.IndexByte(line, '\n') >= 0 {
		var b bytes.Buffer
		if err := json.Compact(&b, line); err != nil {
			return fmt.Errorf("certificate archive: %s: %w", c.Serial, err)
		}
		line = b.Bytes()
	}
	buf := append(slices.Clip(line), '\n')
	return a.writeLines([]*api.Certificate{c}, buf, []int{len(buf)})
}

// writeLines writes buf, the lines of certs, which end at ends, and indexes them.
func (a *certArchive) writeLines(certs []*api.Certificate, buf []byte, ends []int) error {
	locs := make([]uint64, len(certs))
	start := 0
	for i := range certs {
		// Offsets are known before the write: it starts at size.
		loc, err := archiveLoc(a.size+int64(start), ends[i]-start-1)
		if err != nil {
			return err
		}
		locs[i], start = loc, ends[i]
	}
	if _, err := a.write(buf); err != nil {
		return fmt.Errorf("certificate archive: %w", err)
	}
	for i, c := range certs {
		h := maphash.String(a.seed, c.Serial)
		if _, taken := a.at[h]; taken {
			a.more[c.Serial] = locs[i]
		} else {
			a.at[h] = locs[i]
		}
		a.n++
		a.issued[c.Kind]++
		if c.Status == api.CertRevoked {
			a.revoked[reasonLabel(c)]++
		}
	}
	return nil
}

// maxArchiveBatch bounds the certificates one CmdCertArchive moves: the
// apply encodes and writes them under the state's lock, about 4.3 µs and
// 0.7 KiB each (BenchmarkCertArchive), so a batch holds readers up for
// about a millisecond. 30,000 a day are 120 commands.
const maxArchiveBatch = 256

// applyCertArchive moves the named certificates that expired before
// r.Before, and that no gateway or person holds as its current one, from
// the inventory to the archive. Serials that do not qualify (unknown,
// already archived, not expired long enough, current) are skipped: the
// leader chose them from its own state, which the log may have moved
// since. A malformed request archives nothing.
func (s *State) applyCertArchive(r *CertArchiveRequest) error {
	switch {
	case len(r.Serials) == 0:
		return fmt.Errorf("%w: no certificates to archive", ErrBadRequest)
	case len(r.Serials) > maxArchiveBatch:
		return fmt.Errorf("%w: %d certificates to archive in one command, at most %d", ErrBadRequest, len(r.Serials), maxArchiveBatch)
	case r.Before.IsZero() || r.Before.After(r.At):
		return fmt.Errorf("%w: archive certificates expired before %s: want a time no later than the command's (%s)", ErrBadRequest, r.Before.Format(time.RFC3339), r.At.Format(time.RFC3339))
	}
	seen := make(map[string]bool, len(r.Serials))
	for i, serial := range r.Serials {
		if normSerial(serial) != serial {
			return fmt.Errorf("%w: serial %d, %q: want lowercase hex without leading zeros", ErrBadRequest, i, serial)
		}
		if seen[serial] {
			return fmt.Errorf("%w: serial %s listed twice", ErrBadRequest, serial)
		}
		seen[serial] = true
	}
	people := s.peopleSerials()
	var move []*api.Certificate
	for _, serial := range r.Serials {
		if c := s.certs[serial]; c != nil && c.NotAfter.Before(r.Before) && !s.held(c, people) {
			move = append(move, c)
		}
	}
	if len(move) == 0 {
		return nil
	}
	if err := s.archive.add(move); err != nil {
		return err
	}
	for _, c := range move {
		delete(s.certs, c.Serial)
	}
	return nil
}

// held says whether the registry names c as a gateway's or a person's
// current certificate. people is the set of people's serials
// (peopleSerials), which a caller makes once for many certificates;
// gateways are looked up by name, so that an archive command does not
// walk 20,000 of them under the state's lock.
func (s *State) held(c *api.Certificate, people map[string]bool) bool {
	if g := s.gateways[c.Gateway]; g != nil && g.CertSerial == c.Serial {
		return true
	}
	return people[c.Serial]
}

func (s *State) peopleSerials() map[string]bool {
	out := make(map[string]bool, len(s.people))
	for _, p := range s.people {
		if p.Serial != "" {
			out[normSerial(p.Serial)] = true
		}
	}
	return out
}

// archivable returns, sorted, the serials of the certificates that
// applyCertArchive would move for before. One pass under the read lock;
// the sort is done after it.
func (s *State) archivable(before time.Time) []string {
	s.mu.RLock()
	people := s.peopleSerials()
	var out []string
	for serial, c := range s.certs {
		if c.NotAfter.Before(before) && !s.held(c, people) {
			out = append(out, serial)
		}
	}
	s.mu.RUnlock()
	slices.Sort(out)
	return out
}

// ArchivedCount returns how many certificates are archived.
func (s *State) ArchivedCount() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.archive.len()
}

// eachArchived calls fn with every archived certificate r holds.
func eachArchived(r io.Reader, fn func(c *api.Certificate) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := api.ReadLine(br, 1<<archiveLenBits)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("certificate archive: read: %w", err)
		}
		c := new(api.Certificate)
		if err := json.Unmarshal(line, c); err != nil {
			return fmt.Errorf("certificate archive: %w", err)
		}
		c.Archived = true
		if err := fn(c); err != nil {
			return err
		}
	}
}

// defaultCertArchiveAfter is cert_archive_after's default.
const defaultCertArchiveAfter = 24 * time.Hour

// archiveEvery is how often the leader looks for certificates to archive:
// an eighth of cert_archive_after, between a second and 10 minutes.
func archiveEvery(after time.Duration) time.Duration {
	return min(max(after/8, time.Second), 10*time.Minute)
}

// archiver is the leader's work list of certificates to archive.
type archiver struct {
	mu       sync.Mutex // leaderDuties calls archiveIfDue; so do tests
	lookedAt time.Time  // when the inventory was last scanned
	before   time.Time  // what that scan archives: expired before this
	backlog  []string   // serials found then, not yet submitted
}

// archiveIfDue runs on the leader: every archiveEvery it scans the
// inventory for certificates that expired more than cert_archive_after
// ago, and archives them a command of maxArchiveBatch at a time, at most
// 64 commands a call: a backlog (a cluster upgraded after months of
// renewals) goes on at the next tick, after the leader's other duties,
// without scanning again.
func (n *Node) archiveIfDue(ctx context.Context) error {
	a := &n.archiver
	a.mu.Lock()
	defer a.mu.Unlock()
	after := cmp.Or(n.cfg.CertArchiveAfter, defaultCertArchiveAfter)
	if now := n.now(); len(a.backlog) == 0 && now.Sub(a.lookedAt) >= archiveEvery(after) {
		a.lookedAt, a.before = now, now.Add(-after)
		a.backlog = n.State().archivable(a.before)
	}
	total := 0
	for range 64 {
		if len(a.backlog) == 0 || ctx.Err() != nil {
			break
		}
		serials := a.backlog[:min(len(a.backlog), maxArchiveBatch)]
		if _, err := n.submit(ctx, CmdCertArchive, &CertArchiveRequest{Meta: n.meta("node:" + n.cfg.Node), Before: a.before, Serials: serials}); err != nil {
			// Scanned again next time: this node may no longer lead.
			a.backlog = nil
			return fmt.Errorf("archive %d certificates: %w", len(serials), err)
		}
		a.backlog = a.backlog[len(serials):]
		total += len(serials)
	}
	if total > 0 {
		n.log.Info("certificates archived", "count", total, "expired_before", a.before, "left", len(a.backlog))
	}
	return nil
}
