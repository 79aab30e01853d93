package controller

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// Renewal calls (govnetctl cert renew-all). An officer asks every
// gateway to renew its certificate now, after a change of the CA for
// example: the call is recorded in the replicated state
// (CmdRenewCall), and every node tells each gateway whose current
// certificate was recorded before the call, over its stream, at once or
// when it connects. The gateway renews as it does at two thirds of its
// certificate's life (POST /v1/renew, a new key); its new certificate is
// recorded after the call, so it is not asked again. Gateways whose
// agent predates the calls (govnet-stream/1) are not told: they renew
// on their own schedule, within two thirds of a certificate's life.

// maxRenewReason bounds the reason of a call, in bytes.
const maxRenewReason = 500

// RenewCallRequest records a renewal call; the leader's time is the
// call's.
type RenewCallRequest struct {
	Meta
	Reason string `json:"reason"`
}

func (s *State) applyRenewCall(r *RenewCallRequest) error {
	reason := strings.TrimSpace(r.Reason)
	switch {
	case reason == "":
		return fmt.Errorf("%w: a renewal call needs a reason (the gateways log it)", ErrBadRequest)
	case len(reason) > maxRenewReason || !utf8.ValidString(reason) || strings.ContainsAny(reason, "\n\r"):
		return fmt.Errorf("%w: reason: one line of UTF-8, at most %d bytes", ErrBadRequest, maxRenewReason)
	}
	s.renewCall = &api.RenewCall{At: r.At, Index: s.applying, Actor: r.Actor, Reason: reason}
	return nil
}

// RenewCall returns the last renewal call, nil if none was made.
func (s *State) RenewCall() *api.RenewCall {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.renewCall == nil {
		return nil
	}
	c := *s.renewCall
	return &c
}

// renewDue says whether the certificate serial predates the last renewal
// call (or is not in the inventory), and if so the call's reason and
// time.
func (s *State) renewDue(serial string) (reason string, call time.Time, due bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	reason, due = s.renewDueLocked(serial)
	if due {
		call = s.renewCall.At
	}
	return reason, call, due
}

func (s *State) renewDueLocked(serial string) (string, bool) {
	if s.renewCall == nil {
		return "", false
	}
	// Raft order decides, not the clocks of the nodes that stamped the
	// call and the certificate; the times only for records made before
	// the indexes were kept.
	if c := s.certs[serial]; c != nil {
		switch {
		case c.IssuedIndex != 0 && s.renewCall.Index != 0:
			if c.IssuedIndex > s.renewCall.Index {
				return "", false
			}
		case !c.Issued.Before(s.renewCall.At):
			return "", false
		}
	}
	return s.renewCall.Reason, true
}

// renewCallStatus counts the enrolled gateways and those whose current
// certificate predates the last call.
func (s *State) renewCallStatus() api.RenewCallStatus {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var st api.RenewCallStatus
	if s.renewCall != nil {
		c := *s.renewCall
		st.Call = &c
	}
	for _, g := range s.gateways {
		if g.Status != api.StatusEnrolled {
			continue
		}
		st.Gateways++
		if _, due := s.renewDueLocked(g.CertSerial); due {
			st.Pending++
			st.Waiting = append(st.Waiting, g.ID)
		}
	}
	slices.Sort(st.Waiting)
	st.Waiting = st.Waiting[:min(len(st.Waiting), 100)]
	return st
}

func (n *Node) handleRenewAll(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	var req api.RenewCall
	if !decode(w, r, &req) {
		return
	}
	if _, err := n.submit(r.Context(), CmdRenewCall, &RenewCallRequest{Meta: n.meta(id.Name), Reason: req.Reason}); err != nil {
		n.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, n.State().renewCallStatus())
}

func (n *Node) handleRenewAllStatus(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	writeJSON(w, http.StatusOK, n.State().renewCallStatus())
}

// callRenewal tells st's gateway to renew its certificate if it predates
// the last renewal call and the gateway was not told of that call on this
// stream with that certificate yet (it may have renewed for an earlier
// call while this one was made);
// false ends the stream (a failed write). Only the sender on st calls it.
func (s *streamSender) callRenewal(st *gwStream) bool {
	if !st.renewCalls {
		return true
	}
	serial, _ := st.cert()
	reason, call, due := s.n.State().renewDue(serial)
	told := renewTold{call: call, serial: serial}
	if !due || (st.told.call.Equal(told.call) && st.told.serial == told.serial) {
		return true
	}
	if st.out.event(api.WatchEvent{Renew: reason}) != nil {
		return false
	}
	st.told = told
	return true
}
