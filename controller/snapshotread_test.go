package controller

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/policy/policytest"
)

// TestRecordReader: lines longer than the reader's buffer, control bytes
// in a type, and a failing reader, read by hand as encoding/json reads
// them (FuzzSnapshot's seeds cover the other forms).
func TestRecordReader(t *testing.T) {
	const hdr = `{"format":"govnet-state/1","index":3}` + "\n"
	long := `{"type":"policy","data":{"version":1,"source":"` + strings.Repeat("x", 200<<10) + `"}}` + "\n"
	dir := t.TempDir()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	read := func(data string, byHand bool) ([]byte, error) {
		rr := newRecordReader(strings.NewReader(data))
		if !byHand {
			rr.generic(nil)
		}
		s, err := readRecords(rr, dir)
		if err != nil {
			return nil, err
		}
		defer s.close()
		return snapshotBytes(t, &FSM{state: s, spillDir: dir, log: logger, onApply: func(uint64, CommandType) {}}), nil
	}
	for name, data := range map[string]string{
		"a line of 200 KiB":        hdr + long + long,
		"a control byte in a type": hdr + "{\"type\":\"net\x01work\",\"data\":{}}\n",
		"no quote after the type":  hdr + `{"type":"network}` + "\n",
	} {
		got, err := read(data, true)
		want, werr := read(data, false)
		if (err == nil) != (werr == nil) || !bytes.Equal(got, want) {
			t.Errorf("%s: by hand %v (%d bytes), by encoding/json %v (%d bytes)", name, err, len(got), werr, len(want))
		}
	}
	if got, err := read(hdr+long, true); err != nil || !bytes.Contains(got, []byte(strings.Repeat("x", 200<<10))) {
		t.Errorf("the long policy: %v", err)
	}

	disk := errors.New("disk failed")
	_, err := readSnapshot(io.MultiReader(strings.NewReader(hdr+`{"type":"network","data":{}}`), iotest.ErrReader(disk)), dir)
	if !errors.Is(err, disk) {
		t.Errorf("a failing reader: %v, want %v", err, disk)
	}
}

// BenchmarkReadSnapshot reads the snapshot of a national-shaped state
// (20,435 gateways and their agencies, a certificate each and five audit
// entries each: about what a node at 20,000 gateways restores at start,
// installs from its leader, and reads three times in a restore), by hand
// as readSnapshot does and by encoding/json alone, as it did before.
func BenchmarkReadSnapshot(b *testing.B) {
	agencies, gateways := policytest.National(20, 29)
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	rec := func(typ string, v any) {
		data, err := json.Marshal(v)
		if err != nil {
			b.Fatal(err)
		}
		if err := enc.Encode(snapshotRecord{Type: typ, Data: data}); err != nil {
			b.Fatal(err)
		}
	}
	enc.Encode(snapshotHeader{Format: snapshotFormat, Index: 1})
	rec("network", snapshotNetwork{Overlay: netip.MustParsePrefix("100.64.0.0/10")})
	for _, a := range agencies {
		rec("agency", a)
	}
	for i, g := range gateways {
		rec("gateway", g)
		rec("cert", api.Certificate{
			Serial: fmt.Sprintf("%x", 1<<40+i), Kind: "gateway", Subject: g.ID, Agency: g.Agency, Gateway: g.ID,
			SANs: []string{g.ID + ".gw.govnet"}, Issuer: strings.Repeat("ab", 20), KeySHA256: strings.Repeat("cd", 32),
			NotBefore: t0, NotAfter: t0.Add(24 * time.Hour), Requester: "gateway:" + g.ID, Issued: t0, IssuedIndex: uint64(i + 2), Status: api.CertValid,
		})
	}
	prev := ""
	for i := range 5 * len(gateways) {
		g := gateways[i%len(gateways)]
		e := api.AuditEntry{Seq: uint64(i + 1), RaftIndex: uint64(i + 2), At: t0.Add(time.Duration(i) * time.Millisecond),
			Actor: "gateway:" + g.ID, Action: CmdGatewayReports.String(), Object: g.ID, RequestSHA256: strings.Repeat("ef", 32), Prev: prev}
		e.Hash = e.ComputeHash()
		prev = e.Hash
		rec("audit", e)
	}
	data := buf.Bytes()
	dir := b.TempDir()
	for _, by := range []string{"hand", "encoding-json"} {
		b.Run("by="+by, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				rr := newRecordReader(bytes.NewReader(data))
				if by != "hand" {
					rr.generic(nil)
				}
				s, err := readRecords(rr, dir)
				if err != nil {
					b.Fatal(err)
				}
				s.close()
			}
		})
	}
}
