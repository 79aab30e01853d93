package controller

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/govnet/govnet/agency"
	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/policy"
)

// The agency registry's operations: import, merge, re-parent, close, and
// gateway decommission.
//
// Rules, checked in the state machine so that every node refuses the same
// things:
//
//   - A closed code stays in the registry for history and is never
//     registered again, by add or by import.
//   - An agency's parent is stored. It starts as the code's parent; an
//     explicit parent (import, add --parent) must be active and of a
//     higher level, and only district-level agencies and below have one:
//     central bodies and provinces stay at the top.
//   - Merge SRC... into DST: every source is active, not DST, of DST's
//     level (provinces into a province, communes into a commune), and DST
//     is not under any source. Active child agencies of the sources move
//     under DST, gateways of the sources (all but decommissioned ones)
//     move to DST, and the sources are closed with merged_into = DST.
//   - Re-parent CODE under P: CODE is district-level or below, P is
//     active, of a higher level, not CODE and not under CODE. What is
//     under CODE follows it.
//   - Close CODE: refused while it has pending or enrolled gateways or
//     active children; merge or move them first.

// Kinds of agency change (api.AgencyPlan.Kind).
const (
	kindMerge    = "merge"
	kindReparent = "reparent"
)

// isActive says whether an agency is registered and not closed.
func isActive(a *api.Agency) bool { return a != nil && !a.Closed() }

// closedErr explains why a closed code cannot be used.
func closedErr(a *api.Agency) error {
	msg := fmt.Sprintf("agency %s was closed on %s", a.Code, a.ClosedAt.UTC().Format(time.DateOnly))
	if a.MergedInto != "" {
		msg += " (merged into " + a.MergedInto + ")"
	}
	return fmt.Errorf("%w: %s; closed codes are never reused", ErrConflict, msg)
}

// canParent checks that an agency of level child may be placed under one
// of level parent.
func canParent(parent, child string) error {
	pl, err1 := agency.ParseLevel(parent)
	cl, err2 := agency.ParseLevel(child)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("%w: unknown level %q or %q", ErrBadRequest, parent, child)
	}
	if cl < agency.District {
		return fmt.Errorf("%w: a %s agency stays at the top of the hierarchy and has no parent", ErrBadRequest, cl)
	}
	if pl >= cl {
		return fmt.Errorf("%w: a %s agency cannot be placed under a %s agency: the parent must be of a higher level", ErrBadRequest, cl, pl)
	}
	return nil
}

// under says whether code lies under root (or is root) by the stored
// parent chain of agencies.
func under(agencies map[string]*api.Agency, code, root string) bool {
	for range 16 { // five levels; a bound against a corrupt chain
		if code == root {
			return true
		}
		a := agencies[code]
		if a == nil || a.Parent == "" {
			return false
		}
		code = a.Parent
	}
	return false
}

// importPlan is what an import adds and renames.
type importPlan struct {
	added     []*api.Agency
	renamed   []*api.Agency // with the new name
	unchanged int
}

// checkImport says what importing rows would do, changing nothing. Rows
// are taken in order: a parent may be registered or come earlier.
func checkImport(agencies map[string]*api.Agency, rows []api.AgencyRow) (*importPlan, error) {
	if len(rows) == 0 {
		return nil, fmt.Errorf("%w: no agencies to import", ErrBadRequest)
	}
	plan := &importPlan{}
	batch := map[string]*api.Agency{}
	lookup := func(code string) *api.Agency {
		if a := batch[code]; a != nil {
			return a
		}
		return agencies[code]
	}
	for i, row := range rows {
		where := ""
		switch {
		case row.Line > 0:
			where = fmt.Sprintf("line %d: ", row.Line)
		case len(rows) > 1:
			where = fmt.Sprintf("agency %d: ", i+1)
		}
		bad := func(err error) error { return fmt.Errorf("%s%w", where, err) }
		code, err := agency.Parse(strings.TrimSpace(row.Code))
		if err != nil {
			return nil, bad(fmt.Errorf("%w: %v", ErrBadRequest, err))
		}
		name := strings.TrimSpace(row.Name)
		if name == "" {
			return nil, bad(fmt.Errorf("%w: agency %s needs a name", ErrBadRequest, code))
		}
		if batch[code.String()] != nil {
			return nil, bad(fmt.Errorf("%w: agency %s is listed twice", ErrBadRequest, code))
		}
		parent, explicit := strings.TrimSpace(row.Parent), strings.TrimSpace(row.Parent) != ""
		if explicit {
			pc, err := agency.Parse(parent)
			if err != nil {
				return nil, bad(fmt.Errorf("%w: parent: %v", ErrBadRequest, err))
			}
			parent = pc.String()
		} else if pc, ok := code.Parent(); ok {
			parent = pc.String()
		}
		if old := agencies[code.String()]; old != nil {
			if old.Closed() {
				return nil, bad(closedErr(old))
			}
			if explicit && parent != old.Parent {
				return nil, bad(fmt.Errorf("%w: agency %s is registered under %s; move it with `govnetctl agency reparent %s --parent %s`",
					ErrConflict, code, cmp.Or(old.Parent, "no parent"), code, parent))
			}
			batch[code.String()] = old
			if old.Name == name {
				plan.unchanged++
			} else {
				r := *old
				r.Name = name
				plan.renamed = append(plan.renamed, &r)
			}
			continue
		}
		a := &api.Agency{Code: code.String(), Name: name, Level: code.Level().String(), Status: api.AgencyActive}
		if parent != "" {
			p := lookup(parent)
			switch {
			case p == nil:
				return nil, bad(fmt.Errorf("%w: parent agency %s of %s is not registered: register it first (in an import: list it on an earlier line)", ErrBadRequest, parent, code))
			case p.Closed():
				hint := "name an active agency as the parent"
				if p.MergedInto != "" {
					hint = "name " + p.MergedInto + " (which it was merged into) as the parent"
				}
				return nil, bad(fmt.Errorf("%w: parent agency %s of %s is closed: %s", ErrConflict, parent, code, hint))
			}
			if explicit {
				if err := canParent(p.Level, a.Level); err != nil {
					return nil, bad(err)
				}
			}
			a.Parent = parent
		}
		batch[a.Code] = a
		plan.added = append(plan.added, a)
	}
	return plan, nil
}

// cleanNames puts the names of rows in the one form the registry keeps
// (agency.Name: NFC, white space collapsed, no invisible characters), so
// that a name written in NFD is the same name, not a rename, and a name
// of nothing visible is refused. The handlers do it before the command
// is written: the state machine applies the names as they come, as
// earlier releases do.
func cleanNames(rows []api.AgencyRow) error {
	for i := range rows {
		name, err := agency.Name(rows[i].Name)
		if err != nil {
			where := ""
			switch {
			case rows[i].Line > 0:
				where = fmt.Sprintf("line %d: ", rows[i].Line)
			case len(rows) > 1:
				where = fmt.Sprintf("agency %d: ", i+1)
			}
			return fmt.Errorf("%s%w: agency %s: %v", where, ErrBadRequest, strings.TrimSpace(rows[i].Code), err)
		}
		rows[i].Name = name
	}
	return nil
}

func (s *State) applyAgencyImport(r *AgencyImportRequest) error {
	plan, err := checkImport(s.agencies, r.Agencies)
	if err != nil {
		return err
	}
	for _, a := range plan.added {
		s.agencies[a.Code] = a
	}
	for _, a := range plan.renamed {
		s.agencies[a.Code].Name = a.Name
	}
	return nil
}

// PreviewImport says what importing rows would do now.
func (s *State) PreviewImport(rows []api.AgencyRow) (*api.AgencyImportResult, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	plan, err := checkImport(s.agencies, rows)
	if err != nil {
		return nil, err
	}
	res := &api.AgencyImportResult{Added: []api.Agency{}, Renamed: []api.Agency{}, Unchanged: plan.unchanged}
	for _, a := range plan.added {
		res.Added = append(res.Added, *a)
	}
	for _, a := range plan.renamed {
		res.Renamed = append(res.Renamed, *a)
	}
	return res, nil
}

// agencyChange is what a merge or a re-parenting does to the registry.
type agencyChange struct {
	kind     string
	into     string
	closed   []string
	agencies []api.AgencyMove
	gateways []api.GatewayMove
}

// planMoves computes a merge of sources into into, or (kindReparent) the
// move of sources[0] under into, from the registry; it changes nothing.
func planMoves(agencies map[string]*api.Agency, gateways map[string]*api.Gateway, kind string, sources []string, into string) (*agencyChange, error) {
	dst := agencies[into]
	switch {
	case into == "":
		return nil, fmt.Errorf("%w: name the agency to merge into (or the new parent)", ErrBadRequest)
	case dst == nil:
		return nil, fmt.Errorf("%w: agency %s is not registered", ErrNotFound, into)
	case dst.Closed():
		return nil, closedErr(dst)
	case len(sources) == 0:
		return nil, fmt.Errorf("%w: name at least one agency to move", ErrBadRequest)
	}
	ch := &agencyChange{kind: kind, into: into, agencies: []api.AgencyMove{}, gateways: []api.GatewayMove{}, closed: []string{}}
	seen := map[string]bool{}
	for _, code := range sources {
		src := agencies[code]
		switch {
		case src == nil:
			return nil, fmt.Errorf("%w: agency %s is not registered", ErrNotFound, code)
		case src.Closed():
			return nil, closedErr(src)
		case seen[code]:
			return nil, fmt.Errorf("%w: agency %s is named twice", ErrBadRequest, code)
		case code == into:
			return nil, fmt.Errorf("%w: agency %s cannot be moved into itself", ErrBadRequest, code)
		case under(agencies, into, code):
			return nil, fmt.Errorf("%w: %s lies under %s: an agency cannot be moved into its own descendant", ErrBadRequest, into, code)
		}
		seen[code] = true
		switch kind {
		case kindMerge:
			if src.Level != dst.Level {
				return nil, fmt.Errorf("%w: %s is a %s and %s a %s: a merger joins agencies of one level (to move one under another, use reparent)",
					ErrBadRequest, code, src.Level, into, dst.Level)
			}
		case kindReparent:
			if len(sources) != 1 {
				return nil, fmt.Errorf("%w: re-parent one agency at a time", ErrBadRequest)
			}
			if src.Parent == into {
				return nil, fmt.Errorf("%w: agency %s is already under %s", ErrConflict, code, into)
			}
			if err := canParent(dst.Level, src.Level); err != nil {
				return nil, err
			}
			ch.agencies = append(ch.agencies, api.AgencyMove{Code: code, From: src.Parent, To: into})
		default:
			return nil, fmt.Errorf("%w: unknown change %q", ErrBadRequest, kind)
		}
	}
	if kind == kindMerge {
		for _, a := range agencies {
			if seen[a.Parent] && !a.Closed() {
				ch.agencies = append(ch.agencies, api.AgencyMove{Code: a.Code, From: a.Parent, To: into})
			}
		}
		for _, g := range gateways {
			if seen[g.Agency] && g.Status != api.StatusDecommissioned {
				ch.gateways = append(ch.gateways, api.GatewayMove{Gateway: g.ID, From: g.Agency, To: into})
			}
		}
		ch.closed = slices.Sorted(func(yield func(string) bool) {
			for c := range seen {
				if !yield(c) {
					return
				}
			}
		})
	}
	slices.SortFunc(ch.agencies, func(a, b api.AgencyMove) int { return strings.Compare(a.Code, b.Code) })
	slices.SortFunc(ch.gateways, func(a, b api.GatewayMove) int { return strings.Compare(a.Gateway, b.Gateway) })
	return ch, nil
}

// apply makes the change on a registry.
func (ch *agencyChange) apply(agencies map[string]*api.Agency, gateways map[string]*api.Gateway, at time.Time) {
	for _, m := range ch.agencies {
		agencies[m.Code].Parent = m.To
	}
	for _, m := range ch.gateways {
		gateways[m.Gateway].Agency = m.To
	}
	for _, c := range ch.closed {
		a := agencies[c]
		a.Status, a.ClosedAt, a.MergedInto = api.AgencyClosed, at, ch.into
	}
}

func (s *State) applyAgencyMerge(r *AgencyMergeRequest) error {
	ch, err := planMoves(s.agencies, s.gateways, kindMerge, r.Sources, r.Code)
	if err != nil {
		return err
	}
	ch.apply(s.agencies, s.gateways, r.At)
	return nil
}

func (s *State) applyAgencyReparent(r *AgencyReparentRequest) error {
	ch, err := planMoves(s.agencies, s.gateways, kindReparent, []string{r.Code}, r.Parent)
	if err != nil {
		return err
	}
	ch.apply(s.agencies, s.gateways, r.At)
	return nil
}

func (s *State) applyAgencyClose(r *AgencyCloseRequest) error {
	a := s.agencies[r.Code]
	switch {
	case a == nil:
		return fmt.Errorf("%w: agency %s is not registered", ErrNotFound, r.Code)
	case a.Closed():
		return closedErr(a)
	}
	var gws, children []string
	for _, g := range s.gateways {
		if g.Agency == a.Code && (g.Status == api.StatusPending || g.Status == api.StatusEnrolled) {
			gws = append(gws, g.ID)
		}
	}
	for _, c := range s.agencies {
		if c.Parent == a.Code && !c.Closed() {
			children = append(children, c.Code)
		}
	}
	if len(gws) > 0 {
		return fmt.Errorf("%w: agency %s still has gateways %s: decommission them, or merge the agency into another (govnetctl agency merge %s --into CODE)",
			ErrConflict, a.Code, listSome(gws), a.Code)
	}
	if len(children) > 0 {
		return fmt.Errorf("%w: agency %s still has active agencies under it (%s): move them first (govnetctl agency reparent CODE --parent P), or merge %s into another",
			ErrConflict, a.Code, listSome(children), a.Code)
	}
	a.Status, a.ClosedAt = api.AgencyClosed, r.At
	return nil
}

// listSome names up to five items, sorted, and how many more there are.
func listSome(items []string) string {
	slices.Sort(items)
	if len(items) <= 5 {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:5], ", "), len(items)-5)
}

// applyGatewayDecommission revokes the gateway's valid certificates with
// reason cessationOfOperation through the revocation path every other
// revocation takes (so its issuer's CRL is re-signed), and marks it
// decommissioned: it leaves every view, its streams end, and it can
// neither renew nor enroll again.
func (s *State) applyGatewayDecommission(r *GatewayDecommissionRequest) error {
	g, ok := s.gateways[r.Gateway]
	if !ok {
		return fmt.Errorf("%w: gateway %s", ErrNotFound, r.Gateway)
	}
	if g.Status == api.StatusDecommissioned {
		return fmt.Errorf("%w: gateway %s is already decommissioned", ErrConflict, g.ID)
	}
	reason := int(ca.ReasonCessationOfOperation)
	var certs []*api.Certificate
	if g.Status == api.StatusRevoked {
		// Its current certificate is revoked already; an older one may not be.
		certs = s.validGatewayCerts(map[string]bool{g.ID: true})[g.ID]
	} else {
		var err error
		if certs, err = s.checkRevoke("", g.ID, reason); err != nil {
			return err
		}
	}
	s.revoke(certs, "", reason, r.At, r.Actor, s.applying)
	g.Status = api.StatusDecommissioned
	return nil
}

// PlanAgencyChange says what a merge (kind "merge": sources into into) or
// a re-parenting (kind "reparent": sources[0] under into) would do now:
// see planAgencyChange.
func (s *State) PlanAgencyChange(kind string, sources []string, into string) (*api.AgencyPlan, error) {
	s.mu.RLock()
	agencies := make([]api.Agency, 0, len(s.agencies))
	for _, a := range s.agenciesSorted() {
		agencies = append(agencies, *a)
	}
	gateways := make([]api.Gateway, 0, len(s.gateways))
	for _, g := range s.gatewaysSorted() {
		gateways = append(gateways, copyGateway(g))
	}
	var cur *api.Policy
	if n := len(s.policies); n > 0 {
		p := s.policies[n-1]
		cur = &p
	}
	s.mu.RUnlock()
	return planAgencyChange(agencies, gateways, cur, kind, sources, into)
}

// planAgencyChange is the preview of a merge or a re-parenting, a pure
// function of the registry and the current policy (nil: none published):
// the agencies and gateways that move and the codes closed, as the state
// machine will apply them (planMoves), the places where the policy names
// a code that closes, and how every gateway's view changes, found by
// compiling the policy before and after on a copy of the registry.
func planAgencyChange(agencies []api.Agency, gateways []api.Gateway, cur *api.Policy, kind string, sources []string, into string) (*api.AgencyPlan, error) {
	before := &policy.Registry{Agencies: agencies, Gateways: gateways}
	after := &policy.Registry{Agencies: slices.Clone(agencies), Gateways: slices.Clone(gateways)}
	am := make(map[string]*api.Agency, len(after.Agencies))
	for i := range after.Agencies {
		am[after.Agencies[i].Code] = &after.Agencies[i]
	}
	gm := make(map[string]*api.Gateway, len(after.Gateways))
	for i := range after.Gateways {
		gm[after.Gateways[i].ID] = &after.Gateways[i]
	}
	ch, err := planMoves(am, gm, kind, sources, into)
	if err != nil {
		return nil, err
	}
	ch.apply(am, gm, time.Time{})
	plan := &api.AgencyPlan{Kind: kind, Into: into, Closed: ch.closed, Agencies: ch.agencies, Gateways: ch.gateways, PolicyRefs: []api.PolicyRef{}}

	compile := func(reg *policy.Registry) (map[string]*api.View, error) {
		views := map[string]*api.View{}
		for _, g := range reg.Gateways {
			if policy.Participates(&g) {
				views[g.ID] = &api.View{Gateway: g.ID, OverlayIP: g.OverlayIP, LANs: policy.OwnLANs(&g)}
			}
		}
		return views, nil
	}
	if cur != nil {
		p, err := policy.Parse(fmt.Sprintf("policy-v%d.yaml", cur.Version), []byte(cur.Source))
		if err != nil {
			return nil, fmt.Errorf("current policy v%d: %w", cur.Version, err)
		}
		closed := map[string]bool{}
		for _, c := range ch.closed {
			closed[c] = true
		}
		for _, r := range p.CodeRefs(closed) {
			plan.PolicyRefs = append(plan.PolicyRefs, api.PolicyRef{Code: r.Code, Where: r.Where(), What: r.What})
		}
		compile = p.Compile
	}
	vb, err := compile(before)
	if err != nil {
		return nil, fmt.Errorf("the current policy does not compile against the registry: %w", err)
	}
	va, err := compile(after)
	if err != nil {
		return nil, fmt.Errorf("the current policy would not compile after the change: %w", err)
	}
	plan.Views = policy.Diff(vb, va, after)
	return plan, nil
}

// HTTP handlers of the registry operations.

func (n *Node) handleAgencyImport(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	var req api.AgencyImport
	if !decode(w, r, &req) {
		return
	}
	if err := cleanNames(req.Agencies); err != nil {
		n.fail(w, err)
		return
	}
	res, err := n.State().PreviewImport(req.Agencies)
	if err != nil {
		n.fail(w, err)
		return
	}
	if req.DryRun {
		res.DryRun = true
		writeJSON(w, http.StatusOK, res)
		return
	}
	index, err := n.submit(r.Context(), CmdAgencyImport, &AgencyImportRequest{Meta: n.meta(id.Name), Agencies: req.Agencies})
	if err != nil {
		n.fail(w, err)
		return
	}
	res.RaftIndex = index
	n.log.Info("agencies imported", "raft_index", index, "added", len(res.Added), "renamed", len(res.Renamed), "actor", id.Name)
	writeJSON(w, http.StatusOK, res)
}

func (n *Node) handleAgencyMerge(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	var req api.AgencyMerge
	if !decode(w, r, &req) {
		return
	}
	n.agencyChange(w, r, id, kindMerge, req.Sources, req.Into, req.DryRun)
}

func (n *Node) handleAgencyReparent(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	var req api.AgencyReparent
	if !decode(w, r, &req) {
		return
	}
	n.agencyChange(w, r, id, kindReparent, []string{r.PathValue("code")}, req.Parent, req.DryRun)
}

// agencyChange previews a merge or re-parenting and, unless dry, commits
// it and returns the same plan with the raft index it was committed at.
func (n *Node) agencyChange(w http.ResponseWriter, r *http.Request, id ca.Identity, kind string, sources []string, into string, dry bool) {
	plan, err := n.State().PlanAgencyChange(kind, sources, into)
	if err != nil {
		n.fail(w, err)
		return
	}
	if dry {
		plan.DryRun = true
		writeJSON(w, http.StatusOK, plan)
		return
	}
	var t CommandType
	var cmd any
	if kind == kindMerge {
		t, cmd = CmdAgencyMerge, &AgencyMergeRequest{Meta: n.meta(id.Name), Sources: sources, Code: into}
	} else {
		t, cmd = CmdAgencyReparent, &AgencyReparentRequest{Meta: n.meta(id.Name), Code: sources[0], Parent: into}
	}
	index, err := n.submit(r.Context(), t, cmd)
	if err != nil {
		n.fail(w, err)
		return
	}
	plan.RaftIndex = index
	n.log.Info("agency "+kind, "agency", into, "raft_index", index, "sources", sources,
		"agencies_moved", len(plan.Agencies), "gateways_moved", len(plan.Gateways), "views_changed", len(plan.Views.Gateways), "actor", id.Name)
	writeJSON(w, http.StatusOK, plan)
}

func (n *Node) handleAgencyClose(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	code := r.PathValue("code")
	if _, err := n.submit(r.Context(), CmdAgencyClose, &AgencyCloseRequest{Meta: n.meta(id.Name), Code: code}); err != nil {
		n.fail(w, err)
		return
	}
	for _, a := range n.State().Agencies() {
		if a.Code == code {
			n.log.Info("agency closed", "agency", code, "actor", id.Name)
			writeJSON(w, http.StatusOK, a)
			return
		}
	}
}

// handleDecommission takes a gateway out of service (officer). Under
// four-eyes approval the revocation it implies must be approved first:
// then only an already revoked gateway is decommissioned in one step.
func (n *Node) handleDecommission(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	var req api.DecommissionRequest
	if r.ContentLength != 0 && !decode(w, r, &req) {
		return
	}
	gw := r.PathValue("id")
	if g, ok := n.State().Gateway(gw); ok && g.Status != api.StatusRevoked && n.cfg.FourEyes {
		writeError(w, http.StatusForbidden, fmt.Sprintf("four-eyes approval is required: request the revocation of %s with `govnetctl request`, have another officer approve it, then decommission it", gw))
		return
	}
	start := time.Now()
	index, err := n.submit(r.Context(), CmdGatewayDecommission, &GatewayDecommissionRequest{Meta: n.meta(id.Name), Gateway: gw, Reason: req.Reason})
	if err != nil {
		n.fail(w, err)
		return
	}
	resp := n.revokeResponse(r.Context(), index, gw, "", start)
	n.log.Info("gateway decommissioned", "gateway", gw, "raft_index", index, "actor", id.Name)
	writeJSON(w, http.StatusOK, resp)
}
