package controller

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestSettle checks how a write left in doubt by a leader's step-down is
// settled: committed, it is not submitted again; lost, it is, at most
// three times in all; any other error is returned as it is.
func TestSettle(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	add := func(code string) error {
		_, err := n.submit(ctx, CmdAgencyUpsert, &AgencyUpsertRequest{Meta: n.meta("op"), Code: code, Name: "district " + code})
		return err
	}
	has := func(code string) func(*State) bool {
		return func(s *State) bool {
			for _, a := range s.Agencies() {
				if a.Code == code {
					return true
				}
			}
			return false
		}
	}
	lost := fmt.Errorf("raft apply %s: %w", CmdAgencyUpsert, errLeadershipLost)
	for _, tc := range []struct {
		name    string
		submit  func(code string, call int) error
		calls   int
		wantErr error
		stored  bool
	}{
		{"committed, then the leader stepped down", func(code string, _ int) error {
			if err := add(code); err != nil {
				return err
			}
			return lost
		}, 1, nil, true},
		{"lost once", func(code string, call int) error {
			if call == 1 {
				return lost
			}
			return add(code)
		}, 2, nil, true},
		{"lost every time", func(string, int) error { return lost }, 3, ErrUnknownOutcome, false},
		{"lost in transit", func(string, int) error {
			return fmt.Errorf("%w: forward to leader: connection reset", ErrUnknownOutcome)
		}, 1, ErrUnknownOutcome, false},
		{"refused", func(string, int) error { return ErrConflict }, 1, ErrConflict, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code := fmt.Sprintf("000.00.00.H%02d", len(n.State().Agencies())+10)
			calls := 0
			err := n.settle(ctx, CmdAgencyUpsert, func() error {
				calls++
				return tc.submit(code, calls)
			}, has(code))
			if calls != tc.calls || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("%d submissions, error %v; want %d, %v", calls, err, tc.calls, tc.wantErr)
			}
			if has(code)(n.State()) != tc.stored {
				t.Fatalf("agency %s stored: %t, want %t", code, !tc.stored, tc.stored)
			}
		})
	}
}

// TestLeadershipLostForwarded checks that a follower tells a forwarded
// write lost to the leader's step-down (which it may settle) from one
// whose forwarding failed (which it may not).
func TestLeadershipLostForwarded(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	defer n.Close()
	for _, tc := range []struct {
		err      error
		settable bool
	}{
		{fmt.Errorf("raft apply gateway-renews: %w", errLeadershipLost), true},
		{ErrUnknownOutcome, false},
		{ErrNotLeader, false},
	} {
		rec := httptest.NewRecorder()
		n.fail(rec, tc.err)
		leader := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes())
		}))
		prev := n.peers.Swap(leader.Client())
		err := n.peerCall(context.Background(), strings.TrimPrefix(leader.URL, "https://"), "/v1/internal/apply", "application/octet-stream", strings.NewReader("x"), "", nil)
		n.peers.Store(prev)
		leader.Close()
		if errors.Is(err, errLeadershipLost) != tc.settable {
			t.Errorf("leader failed with %q (HTTP %d): the follower got %v", tc.err, rec.Code, err)
		}
	}
}
