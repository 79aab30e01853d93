package policy

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"github.com/goccy/go-yaml/token"

	"github.com/govnet/govnet/agency"
	"github.com/govnet/govnet/api"
)

// Parse reads a policy document. It checks the YAML syntax, the structure
// (known keys, value types, names, port specs, agency code syntax, level
// names) and the references inside the document (groups named by groups and
// services, cycles). References into the registry are Validate's job. On
// failure the error is an ErrorList and the Policy is nil.
func Parse(filename string, src []byte) (*Policy, error) {
	// A byte order mark, as some editors write, is not part of the first
	// key.
	src = bytes.TrimPrefix(src, []byte("\ufeff"))
	ps := &parseState{errs: errs{file: filename}}
	f, err := parseYAML(src)
	if err != nil {
		ps.yamlError(err)
		return nil, ps.errors.Err()
	}
	p := &Policy{File: filename}
	var body ast.Node
	if len(f.Docs) > 0 {
		body = f.Docs[0].Body
	}
	if len(f.Docs) > 1 {
		d := f.Docs[1]
		at := Pos{}
		if d.Start != nil {
			at = tokenPos(d.Start)
		} else if d.Body != nil {
			at = pos(d.Body)
		}
		ps.add(at, "put the whole policy in one document", "a second YAML document")
	}
	ps.policy(p, body)
	ps.errors = append(ps.errors, p.checkDocument(p.names())...)
	if len(ps.errors) > 0 {
		return nil, ps.errors.Err()
	}
	return p, nil
}

// parseYAML turns a panic of the YAML parser into an error: a policy comes
// from a person and must never take the controller down.
func parseYAML(src []byte) (f *ast.File, err error) {
	if err := checkFlowDepth(src); err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("YAML parser failed: %v", r)
		}
	}()
	return parser.ParseBytes(src, 0)
}

type parseState struct {
	errs
}

// yamlError reports an error of the YAML parser at the token it names.
func (ps *parseState) yamlError(err error) {
	var ye interface {
		GetToken() *token.Token
		GetMessage() string
	}
	var de *DepthError
	if errors.As(err, &de) {
		ps.add(de.At, "write nested lists and maps in block style", "flow collections ([...] or {...}) nested deeper than %d", MaxFlowDepth)
		return
	}
	if errors.As(err, &ye) {
		at := Pos{Line: 1, Column: 1}
		if tk := ye.GetToken(); tk != nil && tk.Position != nil {
			at = tokenPos(tk)
		}
		ps.add(at, "", "%s", ye.GetMessage())
		return
	}
	ps.add(Pos{Line: 1, Column: 1}, "", "%v", err)
}

func tokenPos(tk *token.Token) Pos {
	if tk == nil || tk.Position == nil {
		return Pos{}
	}
	return Pos{Line: tk.Position.Line, Column: tk.Position.Column}
}

// pos returns where a node starts: a block mapping at its first key, other
// nodes at their first token.
func pos(n ast.Node) Pos {
	switch v := n.(type) {
	case nil:
		return Pos{}
	case *ast.MappingNode:
		if !v.IsFlowStyle && len(v.Values) > 0 {
			return pos(v.Values[0])
		}
		return tokenPos(v.Start)
	case *ast.MappingValueNode:
		if v.Key != nil {
			return pos(v.Key)
		}
	}
	return tokenPos(n.GetToken())
}

var (
	topKeys     = []string{"version", "groups", "services", "rules", "tests"}
	groupKeys   = []string{"level", "subtree", "agencies", "gateways", "groups"}
	serviceKeys = []string{"gateways", "group", "ports"}
	ruleKeys    = []string{"from", "to", "ports"}
	testKeys    = []string{"from", "to", "port", "expect"}
	levelNames  = []string{"central", "province", "district", "commune", "unit"}
)

const (
	nameHint = "names are lowercase letters, digits and -"
	portHint = "want tcp/N, udp/N, tcp/N-M, udp/N-M or icmp"
)

func (ps *parseState) policy(p *Policy, body ast.Node) {
	entries, ok := ps.mapping(body, "policy")
	if !ok {
		return
	}
	top := ps.fields(entries, "the policy", topKeys)
	if v, ok := top["version"]; ok {
		if s, at, ok := ps.scalar(v.Value, "version"); ok {
			n, err := strconv.Atoi(s)
			if err != nil || n != Version {
				ps.add(at, fmt.Sprintf("this release reads version %d", Version), "unsupported version %q", s)
			}
			p.Version = n
		}
	} else {
		ps.add(Pos{Line: 1, Column: 1}, fmt.Sprintf("start the policy with version: %d", Version), "missing version")
	}
	if v, ok := top["groups"]; ok {
		groups, _ := ps.mapping(v.Value, "groups")
		for _, e := range groups {
			if name, at, ok := ps.key(e, "group"); ok {
				p.Groups = append(p.Groups, ps.group(name, at, e.Value))
			}
		}
	}
	if v, ok := top["services"]; ok {
		services, _ := ps.mapping(v.Value, "services")
		for _, e := range services {
			if name, at, ok := ps.key(e, "service"); ok {
				p.Services = append(p.Services, ps.service(name, at, e.Value))
			}
		}
	}
	if v, ok := top["rules"]; ok {
		rules, _ := ps.list(v.Value, "rules", "want a list of rules: - from: [...]")
		for i, n := range rules {
			p.Rules = append(p.Rules, ps.rule(i+1, n))
		}
	}
	if v, ok := top["tests"]; ok {
		tests, _ := ps.list(v.Value, "tests", "want a list of tests: - from: ...")
		for i, n := range tests {
			p.Tests = append(p.Tests, ps.test(i+1, n))
		}
	}
}

func (ps *parseState) group(name string, at Pos, body ast.Node) *Group {
	g := &Group{Name: name, Pos: at}
	what := "group " + name
	before := len(ps.errors)
	entries, _ := ps.mapping(body, what)
	f := ps.fields(entries, what, groupKeys)
	if v, ok := f["level"]; ok {
		if s, at, ok := ps.scalar(v.Value, what+": level"); ok {
			l, err := agency.ParseLevel(s)
			if err != nil {
				hint := didYouMean(s, levelNames)
				if hint == "" {
					hint = "want " + strings.Join(levelNames, ", ")
				}
				ps.add(at, hint, "%s: unknown level %q", what, s)
			}
			g.Level = l
		}
	}
	if v, ok := f["subtree"]; ok {
		if s, at, ok := ps.scalar(v.Value, what+": subtree"); ok && ps.checkCode(s, at, what+": subtree") {
			g.Subtree = &Ref{Name: s, Pos: at}
		}
	}
	if v, ok := f["agencies"]; ok {
		g.Agencies = ps.codes(v.Value, what+": agencies")
	}
	if v, ok := f["gateways"]; ok {
		g.Gateways = ps.names(v.Value, what+": gateways", "gateway ids")
	}
	if v, ok := f["groups"]; ok {
		g.Groups = ps.names(v.Value, what+": groups", "group names")
	}
	if len(ps.errors) == before && g.Level == 0 && g.Subtree == nil && len(g.Agencies)+len(g.Gateways)+len(g.Groups) == 0 {
		ps.add(at, "set level, subtree, agencies, gateways or groups", "%s selects nothing", what)
	}
	return g
}

func (ps *parseState) service(name string, at Pos, body ast.Node) *Service {
	s := &Service{Name: name, Pos: at}
	what := "service " + name
	entries, _ := ps.mapping(body, what)
	f := ps.fields(entries, what, serviceKeys)
	gws, hasGateways := f["gateways"]
	grp, hasGroup := f["group"]
	switch {
	case hasGateways && hasGroup:
		ps.add(pos(grp), "a service names its gateways one way", "%s: set gateways or group, not both", what)
	case hasGateways:
		s.Gateways = ps.names(gws.Value, what+": gateways", "gateway ids")
		if len(s.Gateways) == 0 && isEmpty(gws.Value) {
			ps.add(pos(gws), "list the gateways that serve it", "%s: gateways is empty", what)
		}
	case hasGroup:
		if n, at, ok := ps.scalar(grp.Value, what+": group"); ok && ps.checkName(n, at, what+": group") {
			s.Group = &Ref{Name: n, Pos: at}
		}
	default:
		ps.add(at, "set gateways: [id, ...] or group: name", "%s has no gateways", what)
	}
	if v, ok := f["ports"]; ok {
		s.Ports = ps.ports(v.Value, what+": ports")
		if isEmpty(v.Value) {
			ps.add(pos(v), "list them, like [tcp/443]", "%s: ports is empty", what)
		}
	} else {
		ps.add(at, "list them, like ports: [tcp/443]", "%s has no ports", what)
	}
	return s
}

func (ps *parseState) rule(index int, n ast.Node) *Rule {
	r := &Rule{Index: index, Pos: pos(n)}
	what := fmt.Sprintf("rule %d", index)
	entries, _ := ps.mapping(n, what)
	f := ps.fields(entries, what, ruleKeys)
	for _, k := range []string{"from", "to"} {
		v, ok := f[k]
		if !ok {
			ps.add(r.Pos, fmt.Sprintf("set %s: [name, ...]", k), "%s: missing %s", what, k)
			continue
		}
		refs := ps.names(v.Value, what+": "+k, "names")
		if isEmpty(v.Value) {
			ps.add(pos(v), "list at least one name", "%s: %s is empty", what, k)
		}
		if k == "from" {
			r.From = refs
		} else {
			r.To = refs
		}
	}
	if v, ok := f["ports"]; ok {
		r.Ports = ps.ports(v.Value, what+": ports")
		if isEmpty(v.Value) {
			ps.add(pos(v), "list them, like [tcp/443], or remove the key", "%s: ports is empty", what)
		}
	}
	return r
}

func (ps *parseState) test(index int, n ast.Node) *Test {
	t := &Test{Index: index, Pos: pos(n)}
	what := fmt.Sprintf("test %d", index)
	entries, _ := ps.mapping(n, what)
	f := ps.fields(entries, what, testKeys)
	for _, k := range testKeys {
		if _, ok := f[k]; !ok {
			ps.add(t.Pos, "a test sets from, to, port and expect", "%s: missing %s", what, k)
		}
	}
	for _, k := range []string{"from", "to"} {
		v, ok := f[k]
		if !ok {
			continue
		}
		s, at, ok := ps.scalar(v.Value, what+": "+k)
		if !ok {
			continue
		}
		if strings.Contains(s, ".") {
			ps.checkCode(s, at, what+": "+k)
		} else {
			ps.checkName(s, at, what+": "+k)
		}
		if k == "from" {
			t.From = Ref{Name: s, Pos: at}
		} else {
			t.To = Ref{Name: s, Pos: at}
		}
	}
	if v, ok := f["port"]; ok {
		if s, at, ok := ps.scalar(v.Value, what+": port"); ok {
			spec, msg := parsePortSpec(s)
			spec.Pos = at
			switch {
			case msg != "":
				ps.add(at, "want tcp/N, udp/N or icmp", "%s: %s", what, msg)
			case spec.First != spec.Last:
				ps.add(at, "a test checks one port, like tcp/443", "%s: port %q is a range", what, s)
			}
			t.Port = spec
		}
	}
	if v, ok := f["expect"]; ok {
		if s, at, ok := ps.scalar(v.Value, what+": expect"); ok {
			switch s {
			case "allow":
				t.Expect = true
			case "deny":
			default:
				ps.add(at, "want allow or deny", "%s: bad expect %q", what, s)
			}
		}
	}
	return t
}

// mapping returns the entries of a mapping; null counts as an empty one.
func (ps *parseState) mapping(n ast.Node, what string) ([]*ast.MappingValueNode, bool) {
	if !ps.plain(n, what) {
		return nil, false
	}
	switch v := n.(type) {
	case nil, *ast.NullNode:
		return nil, true
	case *ast.MappingNode:
		return v.Values, true
	case *ast.MappingValueNode:
		return []*ast.MappingValueNode{v}, true
	}
	ps.add(pos(n), "", "%s: want a mapping of keys to values, found %s", what, kind(n))
	return nil, false
}

// list returns the items of a sequence; null counts as an empty one.
func (ps *parseState) list(n ast.Node, what, hint string) ([]ast.Node, bool) {
	if !ps.plain(n, what) {
		return nil, false
	}
	switch v := n.(type) {
	case nil, *ast.NullNode:
		return nil, true
	case *ast.SequenceNode:
		return v.Values, true
	}
	ps.add(pos(n), hint, "%s: want a list, found %s", what, kind(n))
	return nil, false
}

// isEmpty reports whether a list value holds no items.
func isEmpty(n ast.Node) bool {
	switch v := n.(type) {
	case nil, *ast.NullNode:
		return true
	case *ast.SequenceNode:
		return len(v.Values) == 0
	}
	return false
}

// fields indexes the entries of a mapping by key, reporting unknown keys.
func (ps *parseState) fields(entries []*ast.MappingValueNode, what string, known []string) map[string]*ast.MappingValueNode {
	f := make(map[string]*ast.MappingValueNode, len(entries))
	for _, e := range entries {
		k, at, ok := ps.key(e, "key")
		if !ok {
			continue
		}
		if !slices.Contains(known, k) {
			hint := didYouMean(k, known)
			if hint == "" {
				hint = "known keys: " + strings.Join(known, ", ")
			}
			ps.add(at, hint, "unknown key %q in %s", k, what)
			continue
		}
		if _, dup := f[k]; dup {
			ps.add(at, "", "%s: key %q set twice", what, k)
			continue
		}
		f[k] = e
	}
	return f
}

// key returns the key of a mapping entry, checked as a name when what is
// "group" or "service".
func (ps *parseState) key(e *ast.MappingValueNode, what string) (string, Pos, bool) {
	if e.Key == nil {
		return "", pos(e), false
	}
	var k ast.Node = e.Key
	if mk, ok := k.(*ast.MappingKeyNode); ok {
		k = mk.Value
		if k == nil {
			ps.add(pos(e), "", "empty %s", what)
			return "", pos(e), false
		}
	}
	s, at, ok := ps.scalar(k, what)
	if !ok {
		return "", at, false
	}
	if what != "key" && !ps.checkName(s, at, what) {
		return "", at, false
	}
	return s, at, true
}

// scalar returns the text of a single value.
func (ps *parseState) scalar(n ast.Node, what string) (string, Pos, bool) {
	at := pos(n)
	if !ps.plain(n, what) {
		return "", at, false
	}
	switch v := n.(type) {
	case *ast.StringNode:
		return v.Value, at, true
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.InfinityNode, *ast.NanNode:
		if tk := n.GetToken(); tk != nil {
			return tk.Value, at, true
		}
	case nil, *ast.NullNode:
		ps.add(at, "", "%s: missing value", what)
		return "", at, false
	}
	ps.add(at, "", "%s: want a single value, found %s", what, kind(n))
	return "", at, false
}

// plain reports YAML features that the policy language leaves out.
func (ps *parseState) plain(n ast.Node, what string) bool {
	switch n.(type) {
	case *ast.AnchorNode, *ast.AliasNode, *ast.MergeKeyNode:
		ps.add(pos(n), "write the value out", "%s: anchors, aliases and merge keys are not supported", what)
		return false
	case *ast.TagNode:
		ps.add(pos(n), "remove the tag", "%s: tags are not supported", what)
		return false
	}
	return true
}

func kind(n ast.Node) string {
	switch n.(type) {
	case *ast.MappingNode, *ast.MappingValueNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	case *ast.LiteralNode:
		return "a block of text"
	case *ast.NullNode, nil:
		return "nothing"
	}
	return "a single value"
}

// names reads a list of names (group, service or gateway).
func (ps *parseState) names(n ast.Node, what, of string) []Ref {
	items, _ := ps.list(n, what, "want a list of "+of+", like [a, b]")
	var refs []Ref
	for _, it := range items {
		s, at, ok := ps.scalar(it, what)
		if !ok {
			continue
		}
		if strings.Contains(s, ".") {
			if _, err := agency.Parse(s); err == nil {
				ps.add(at, "rules name groups or gateways; put the agency in a group: agencies: ["+s+"]", "%s: agency code %s not allowed here", what, s)
				continue
			}
		}
		if ps.checkName(s, at, what) {
			refs = append(refs, Ref{Name: s, Pos: at})
		}
	}
	return refs
}

// codes reads a list of agency codes.
func (ps *parseState) codes(n ast.Node, what string) []Ref {
	items, _ := ps.list(n, what, "want a list of agency codes, like [000.00.00.H29]")
	var refs []Ref
	for _, it := range items {
		if s, at, ok := ps.scalar(it, what); ok && ps.checkCode(s, at, what) {
			refs = append(refs, Ref{Name: s, Pos: at})
		}
	}
	return refs
}

// ports reads a list of port specs.
func (ps *parseState) ports(n ast.Node, what string) []PortSpec {
	items, _ := ps.list(n, what, "want a list of ports, like [tcp/443, icmp]")
	var specs []PortSpec
	for _, it := range items {
		s, at, ok := ps.scalar(it, what)
		if !ok {
			continue
		}
		spec, msg := parsePortSpec(s)
		if msg != "" {
			ps.add(at, portHint, "%s: %s", what, msg)
			continue
		}
		spec.Pos = at
		specs = append(specs, spec)
	}
	return specs
}

func (ps *parseState) checkName(s string, at Pos, what string) bool {
	if validName(s) {
		return true
	}
	ps.add(at, nameHint, "%s: bad name %q", what, s)
	return false
}

func (ps *parseState) checkCode(s string, at Pos, what string) bool {
	if _, err := agency.Parse(s); err != nil {
		ps.add(at, "", "%s: %v", what, err)
		return false
	}
	return true
}

// validName reports whether s is a name: lowercase letters, digits and -,
// not starting with -.
func validName(s string) bool {
	if s == "" || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// parsePortSpec reads tcp/N, udp/N, tcp/N-M, udp/N-M or icmp. On failure
// it returns a message saying what is wrong.
func parsePortSpec(s string) (PortSpec, string) {
	if s == api.ProtoICMP {
		return PortSpec{Proto: api.ProtoICMP}, ""
	}
	proto, ports, ok := strings.Cut(s, "/")
	if !ok || proto != api.ProtoTCP && proto != api.ProtoUDP {
		return PortSpec{}, fmt.Sprintf("bad port spec %q", s)
	}
	first, last, isRange := strings.Cut(ports, "-")
	lo, ok1 := parsePort(first)
	hi := lo
	ok2 := true
	if isRange {
		hi, ok2 = parsePort(last)
	}
	if !ok1 || !ok2 {
		return PortSpec{}, fmt.Sprintf("bad port spec %q: ports are 1 to 65535", s)
	}
	if lo > hi {
		return PortSpec{}, fmt.Sprintf("bad port range %q: %d is above %d", s, lo, hi)
	}
	if n := int(hi) - int(lo) + 1; n > MaxRangePorts {
		return PortSpec{}, fmt.Sprintf("port range %q has %d ports, more than %d", s, n, MaxRangePorts)
	}
	return PortSpec{Proto: proto, First: lo, Last: hi}, ""
}

func parsePort(s string) (uint16, bool) {
	if s == "" || s[0] < '0' || s[0] > '9' {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, false
	}
	return uint16(n), true
}

// checkDocument checks what needs only the document: unique names, groups
// named by groups and services, and cycles among groups.
func (p *Policy) checkDocument(nm names) ErrorList {
	e := &errs{file: p.File}
	seen := make(map[string]bool)
	for _, g := range p.Groups {
		if seen[g.Name] {
			e.add(g.Pos, "", "group %s defined twice", g.Name)
		}
		seen[g.Name] = true
	}
	for _, s := range p.Services {
		switch {
		case nm.groups[s.Name] != nil:
			e.add(s.Pos, "groups and services share one set of names", "service %s: name already used by a group", s.Name)
		case seen[s.Name]:
			e.add(s.Pos, "", "service %s defined twice", s.Name)
		}
		seen[s.Name] = true
	}
	groupNames := make([]string, 0, len(p.Groups))
	for _, g := range p.Groups {
		groupNames = append(groupNames, g.Name)
	}
	slices.Sort(groupNames)
	unknownGroup := func(r Ref, what string) {
		hint := e.hint(r.Name, groupNames)
		if _, isService := nm.services[r.Name]; isService {
			hint = r.Name + " is a service"
		}
		e.add(r.Pos, hint, "%s: unknown group %s", what, r.Name)
	}
	for _, g := range p.Groups {
		for _, r := range g.Groups {
			if nm.groups[r.Name] == nil {
				unknownGroup(r, "group "+g.Name)
			}
		}
	}
	for _, s := range p.Services {
		if s.Group != nil && nm.groups[s.Group.Name] == nil {
			unknownGroup(*s.Group, "service "+s.Name)
		}
	}

	// Cycles: depth-first, reporting each at the reference that closes it.
	const (
		onStack = 1
		done    = 2
	)
	state := make(map[string]int, len(p.Groups))
	var stack []string
	var visit func(g *Group)
	visit = func(g *Group) {
		state[g.Name] = onStack
		stack = append(stack, g.Name)
		for _, r := range g.Groups {
			sub := nm.groups[r.Name]
			switch {
			case sub == nil:
			case state[r.Name] == onStack:
				i := slices.Index(stack, r.Name)
				cycle := append(slices.Clone(stack[i:]), r.Name)
				e.add(r.Pos, "a group cannot include itself", "group cycle: %s", strings.Join(cycle, " -> "))
			case state[r.Name] == 0:
				visit(sub)
			}
		}
		stack = stack[:len(stack)-1]
		state[g.Name] = done
	}
	for _, g := range p.Groups {
		if state[g.Name] == 0 {
			visit(g)
		}
	}
	return e.errors
}
