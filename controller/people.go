package controller

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// checkPerson admits a person only if the registry holds their name with
// the role and the serial of the certificate presented, and has not
// revoked it: a certificate alone, even one our CA signed, is not enough.
func (n *Node) checkPerson(id ca.Identity, r *http.Request) error {
	p, ok := n.State().Person(id.Name)
	serial := ""
	if leaf := clientLeaf(r); leaf != nil {
		serial = ca.Serial(leaf)
	}
	switch {
	case !ok:
		return fmt.Errorf("%w: %s is not in the registry of people", ErrUnauthorized, id.Name)
	case p.Serial != serial && p.Previous == serial && serial != "":
		return fmt.Errorf("%w: certificate %s of %s was renewed to %s: use that one, or finish the renewal (govnetctl person renew)", ErrUnauthorized, serial, id.Name, p.Serial)
	case p.Serial != serial:
		return fmt.Errorf("%w: certificate %s is not the one registered for %s", ErrUnauthorized, serial, id.Name)
	case p.Status != api.PersonActive:
		return fmt.Errorf("%w: %s's certificate is %s", ErrUnauthorized, id.Name, p.Status)
	case p.Role != id.Role:
		return fmt.Errorf("%w: %s is registered as %s, the certificate says %s", ErrUnauthorized, id.Name, p.Role, id.Role)
	}
	if leaf := clientLeaf(r); leaf != nil {
		if err := n.State().keyIsRecorded(leaf); err != nil {
			return fmt.Errorf("%w: %w", ErrUnauthorized, err)
		}
	}
	return nil
}

// ErrUnauthorized refuses a caller the registry does not know or has revoked.
var ErrUnauthorized = errors.New("unauthorized")

// registerBootstrap records the people `govnetd init` issued credentials
// to (only the founding node has the list) who are not in the registry
// yet: all of them on the first start, and after a start that stopped
// half way (a crash, a lost leadership) the rest.
func (n *Node) registerBootstrap(ctx context.Context) {
	if n.bootstrapped.Load() {
		return
	}
	b, err := os.ReadFile(n.cfg.pkiPath(bootstrapPeopleFile))
	if errors.Is(err, os.ErrNotExist) {
		n.bootstrapped.Store(true) // not the founding node
		return
	}
	if err != nil {
		n.log.Error("bootstrap people", "err", err)
		return
	}
	var people []bootstrapPerson
	if err := json.Unmarshal(b, &people); err != nil {
		n.log.Error("bootstrap people", "file", n.cfg.pkiPath(bootstrapPeopleFile), "err", err)
		return
	}
	people = slices.DeleteFunc(people, func(p bootstrapPerson) bool {
		_, registered := n.State().Person(p.Name)
		return registered
	})
	var certs []api.Certificate
	for _, p := range people {
		if _, recorded := n.State().Certificate(p.Serial); p.Cert != nil && !recorded {
			certs = append(certs, *p.Cert)
		}
	}
	if len(certs) > 0 {
		_, err := n.submit(ctx, CmdCertRecord, &CertRecordRequest{Meta: n.meta("node:" + n.cfg.Node), Certs: certs})
		if err != nil && !errors.Is(err, ErrConflict) {
			n.log.Error("record bootstrap certificates", "err", err)
			return
		}
	}
	for _, p := range people {
		req := &PersonUpsertRequest{Meta: n.meta("node:" + n.cfg.Node), Name: p.Name, Role: p.Role, Serial: p.Serial, Status: api.PersonActive}
		if _, err := n.submit(ctx, CmdPersonUpsert, req); err != nil {
			n.log.Error("register bootstrap person", "person", p.Name, "err", err)
			return
		}
	}
	n.bootstrapped.Store(true)
}

func (n *Node) handlePeople(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	writeJSON(w, http.StatusOK, n.State().People())
}

// handlePersonAdd registers a person's certificate (officer).
func (n *Node) handlePersonAdd(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	// One officer registering another would approve their own requests.
	if n.oneStepRefused(w, "request the registration (govnetctl request person NAME --role ROLE --serial HEX)") {
		return
	}
	var p api.Person
	if !decode(w, r, &p) {
		return
	}
	req := &PersonUpsertRequest{Meta: n.meta(id.Name), Name: p.Name, Role: p.Role, Serial: p.Serial, Status: api.PersonActive}
	if _, err := n.submit(r.Context(), CmdPersonUpsert, req); err != nil {
		n.fail(w, err)
		return
	}
	got, _ := n.State().Person(p.Name)
	writeJSON(w, http.StatusOK, got)
}

// handlePersonRevoke revokes a person's certificate (officer): every
// later call with it is refused, on every node.
func (n *Node) handlePersonRevoke(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	p, ok := n.State().Person(r.PathValue("name"))
	if !ok {
		n.fail(w, fmt.Errorf("%w: person %s", ErrNotFound, r.PathValue("name")))
		return
	}
	// One officer could revoke every other and be the only approver left.
	if n.oneStepRefused(w, fmt.Sprintf("request the revocation of %s's certificate (govnetctl request revoke --serial %s --revocation-reason privilegeWithdrawn)", p.Name, p.Serial)) {
		return
	}
	req := &PersonUpsertRequest{Meta: n.meta(id.Name), Name: p.Name, Role: p.Role, Serial: p.Serial, Status: api.PersonRevoked}
	if _, err := n.submit(r.Context(), CmdPersonUpsert, req); err != nil {
		n.fail(w, err)
		return
	}
	got, _ := n.State().Person(p.Name)
	writeJSON(w, http.StatusOK, got)
}

func (n *Node) handleRequests(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	writeJSON(w, http.StatusOK, n.State().Requests())
}

func newID() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// handleRequestCreate opens a four-eyes request (operator or officer).
func (n *Node) handleRequestCreate(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	var rc api.RequestCreate
	if !decode(w, r, &rc) {
		return
	}
	req := &RequestCreateRequest{Meta: n.meta(id.Name), Role: id.Role, Kind: rc.Kind, Gateway: rc.Gateway,
		PolicyName: rc.PolicyName, PolicySource: rc.PolicySource, Reason: rc.Reason}
	switch rc.Kind {
	case api.RequestRevoke:
		if rc.Serial != "" {
			if req.Serial = normSerial(rc.Serial); req.Serial == "" {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("serial %q: want the serial in hex", rc.Serial))
				return
			}
		}
		if rc.RevocationReason != "" {
			reason, err := ca.ParseReason(rc.RevocationReason)
			if err != nil {
				writeError(w, http.StatusBadRequest, err.Error())
				return
			}
			req.ReasonCode = int(reason)
		}
	case api.RequestToken, api.RequestInvite:
		var err error
		if req.TTL, err = parseTTL(rc.TTL); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		req.Reenroll = rc.Kind == api.RequestToken && rc.Reenroll
		if rc.Kind == api.RequestInvite {
			req.PersonName, req.PersonRole, req.KeySHA256 = rc.PersonName, rc.PersonRole, strings.ToLower(rc.KeySHA256)
		}
	case api.RequestRestore:
		req.BackupSHA256 = strings.ToLower(rc.BackupSHA256)
	case api.RequestPerson:
		req.PersonName, req.PersonRole, req.Serial = rc.PersonName, rc.PersonRole, strings.ToLower(rc.Serial)
	case api.RequestPolicy:
		if req.PolicyName == "" {
			req.PolicyName = "policy.yaml"
		}
		// A policy that does not validate, compile and pass its tests is
		// refused before anyone is asked to approve it.
		if err := CheckPolicy(req.PolicyName, []byte(req.PolicySource), n.State()); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	var err error
	if req.ID, err = newID(); err != nil {
		n.fail(w, err)
		return
	}
	if _, err := n.submit(r.Context(), CmdRequestCreate, req); err != nil {
		n.fail(w, err)
		return
	}
	got, _ := n.State().Request(req.ID)
	n.log.Info("four-eyes request opened", "request", got.ID, "kind", got.Kind, "gateway", got.Gateway, "actor", id.Name)
	writeJSON(w, http.StatusCreated, got)
}

// handleRequestDecide approves or rejects a request (an officer who is not
// the requester; the state machine enforces both).
func (n *Node) handleRequestDecide(approve bool) handler {
	return func(w http.ResponseWriter, r *http.Request, id ca.Identity) {
		rid := r.PathValue("id")
		req, ok := n.State().Request(rid)
		if !ok {
			n.fail(w, fmt.Errorf("%w: request %s", ErrNotFound, rid))
			return
		}
		dec := &RequestDecideRequest{Meta: n.meta(id.Name), ID: rid, Role: id.Role, Approve: approve}
		var token string
		if approve {
			switch req.Kind {
			case api.RequestToken, api.RequestInvite:
				var err error
				if token, dec.TokenHash, err = newToken(); err != nil {
					n.fail(w, err)
					return
				}
			case api.RequestPolicy:
				// The registry may have changed since the request.
				if err := CheckPolicy(req.PolicyName, []byte(req.PolicySource), n.State()); err != nil {
					writeError(w, http.StatusConflict, "the policy no longer checks against the registry: "+err.Error())
					return
				}
			}
		}
		if _, err := n.submit(r.Context(), CmdRequestDecide, dec); err != nil {
			n.fail(w, err)
			return
		}
		got, _ := n.State().Request(rid)
		if token != "" {
			tok, _ := n.State().token(dec.TokenHash)
			got.Token = &api.TokenResponse{Gateway: got.Gateway, Person: tok.Person, Role: tok.Role, Token: token, Expires: tok.Expires}
		}
		n.log.Info("four-eyes request decided", "request", got.ID, "kind", got.Kind, "status", got.Status, "gateway", got.Gateway, "actor", id.Name)
		writeJSON(w, http.StatusOK, got)
	}
}
