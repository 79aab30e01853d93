package controller

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
)

// packedSample is a batch with every field set, times zero and not, and
// values at their limits.
func packedSample() *GatewayReportsRequest {
	return &GatewayReportsRequest{Meta: Meta{Actor: "node:ctl2", At: t0.Add(123456789 * time.Nanosecond)}, Reports: []GatewayReportRequest{
		{Meta: Meta{Actor: "gateway:gw-ā", At: t0}, Gateway: "gw-ā", Report: api.Report{
			PolicyVersion: 1<<64 - 1, RaftIndex: 1 << 40, RulesetDigest: "sha256:" + strings.Repeat("ab", 32), Peers: -3,
			LastHandshake: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), At: time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC),
			FailedIndex: 7, ApplyError: "nft: \x00 “quoted”", PeersLeftOut: 1 << 40, PeerError: "peer 0 (gw2): bad key\npeer 1: duplicate"}},
		{Gateway: "gw2"},
	}}
}

// TestPackedReportsRoundTrip: a packed batch decodes to what was packed,
// as its JSON does (times in UTC), and is smaller.
func TestPackedReportsRoundTrip(t *testing.T) {
	want := packedSample()
	b := encodeReportsPacked(want)
	got, err := decodeReportsPacked(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
	}
	j, _ := json.Marshal(want)
	var viaJSON GatewayReportsRequest
	if err := json.Unmarshal(j, &viaJSON); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, &viaJSON) {
		t.Fatalf("packed and JSON decode differently:\npacked %+v\n  json %+v", got, &viaJSON)
	}
	if len(b) >= len(j) {
		t.Errorf("packed %d bytes, JSON %d", len(b), len(j))
	}
	// A time in another zone decodes as the same instant in UTC.
	local := &GatewayReportsRequest{Meta: Meta{At: time.Date(2026, 11, 24, 9, 0, 0, 0, time.FixedZone("ICT", 7*3600))}}
	if got, _ := packedMeta(encodeReportsPacked(local)); !got.At.Equal(local.At) || got.At.Location() != time.UTC {
		t.Errorf("time %v, want %v in UTC", got.At, local.At)
	}
}

// TestPackedReportsRefused: every cut of a batch, bytes after it, a
// string that is not UTF-8, nanoseconds out of range and a count its
// length cannot hold are refused with ErrBadRequest.
func TestPackedReportsRefused(t *testing.T) {
	b := encodeReportsPacked(packedSample())
	for n := range len(b) {
		if _, err := decodeReportsPacked(b[:n]); !errors.Is(err, ErrBadRequest) {
			t.Fatalf("cut to %d of %d bytes: %v", n, len(b), err)
		}
	}
	for name, body := range map[string][]byte{
		"trailing byte": append(append([]byte(nil), b...), 0),
		"bad UTF-8":     encodeReportsPacked(&GatewayReportsRequest{Reports: []GatewayReportRequest{{Gateway: "gw\xff"}}}),
		"nanoseconds":   append(append([]byte(nil), b[:8]...), append([]byte{0x3b, 0x9a, 0xca, 0x00}, b[12:]...)...), // 1e9
		"huge count":    append(encodeReportsPacked(&GatewayReportsRequest{})[:packedTimeLen+1], 0xff, 0xff, 0xff, 0xff, 0x0f),
		"long varint":   append(encodeReportsPacked(&GatewayReportsRequest{})[:packedTimeLen+1], 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01),
		"overlong zero": append(encodeReportsPacked(&GatewayReportsRequest{})[:packedTimeLen+1], 0x80, 0x00),
		"year 10000":    encodeReportsPacked(&GatewayReportsRequest{Meta: Meta{At: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}}),
	} {
		if _, err := decodeReportsPacked(body); !errors.Is(err, ErrBadRequest) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := restampPacked([]byte{byte(CmdGatewayReportsPacked), 1, 2}, t0); err == nil {
		t.Error("a short batch was restamped")
	}
}

// TestRestampPacked: the leader's time replaces the batch's, and nothing
// else changes.
func TestRestampPacked(t *testing.T) {
	req := packedSample()
	b, err := encodeCommand(CmdGatewayReportsPacked, req)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 24, 20, 0, 0, 42, time.UTC)
	out, err := restamp(b, at)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeReportsPacked(out[1:])
	if err != nil {
		t.Fatal(err)
	}
	req.At = at
	if !reflect.DeepEqual(got, req) {
		t.Fatalf("restamped:\n got %+v\nwant %+v", got, req)
	}
	if dec, _ := decodeReportsPacked(b[1:]); !dec.At.Equal(packedSample().At) {
		t.Error("restamp changed its input")
	}
}

// FuzzPackedReports: decoding never panics, and what decodes packs back
// to the same bytes.
func FuzzPackedReports(f *testing.F) {
	f.Add(encodeReportsPacked(packedSample()))
	f.Add(encodeReportsPacked(&GatewayReportsRequest{}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeReportsPacked(b)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error without ErrBadRequest: %v", err)
			}
			return
		}
		if again := encodeReportsPacked(r); string(again) != string(b) {
			t.Fatalf("decoded and packed again differ:\n%x\n%x", b, again)
		}
	})
}

// BenchmarkReportBatchDecode: what a node spends on a batch of 4,096
// ordinary reports before it applies them (the audit entry's fields,
// then the request), JSON against packed.
func BenchmarkReportBatchDecode(b *testing.B) {
	req := &GatewayReportsRequest{Meta: meta("node:ctl1")}
	for i := range maxReportBatch {
		gw := fmt.Sprintf("gw-p01-d003-c%05d", i)
		req.Reports = append(req.Reports, GatewayReportRequest{Meta: Meta{Actor: "gateway:" + gw, At: t0}, Gateway: gw,
			Report: api.Report{PolicyVersion: 12, RaftIndex: 123456, RulesetDigest: "sha256:" + strings.Repeat("0", 64), Peers: 3, LastHandshake: t0}})
	}
	for _, typ := range []CommandType{CmdGatewayReports, CmdGatewayReportsPacked} {
		data, err := encodeCommand(typ, req)
		if err != nil {
			b.Fatal(err)
		}
		s := newState("")
		b.Run(typ.String(), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				s.auditEntry(1, typ, data)
				var err error
				if typ.packed() {
					_, err = decodeReportsPacked(data[1:])
				} else {
					err = applyJSON(data[1:], func(*GatewayReportsRequest) error { return nil })
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/maxReportBatch/1000, "µs/report")
		})
	}
}
