// Package policy is govnet's policy language: it parses a policy document
// (YAML), validates it against the registry of agencies and gateways with
// errors that point at file:line:column, runs the tests embedded in it, and
// compiles it into one api.View per gateway: the WireGuard peers the gateway
// may talk to and the inbound flows it must accept. Everything else is
// denied.
//
// A document has a version (1), named groups of gateways (selected by
// agency level, by subtree of an agency code, or listed explicitly),
// services (gateways plus ports), rules that allow traffic from groups or
// gateways to services, groups or gateways, and tests that state which
// flows must be allowed or denied:
//
//	version: 1
//	groups:
//	  h29-communes: {subtree: 000.00.00.H29, level: commune}
//	services:
//	  ndxp: {gateways: [g22-gw1], ports: [tcp/443]}
//	rules:
//	  - {from: [h29-communes], to: [ndxp]}
//	tests:
//	  - {from: 000.12.04.H29, to: ndxp, port: tcp/443, expect: allow}
//
// Parse checks syntax and everything that needs only the document;
// Validate adds the references into a Registry; Compile produces the views;
// Test runs the embedded tests against them. Check does all four.
package policy

import (
	"fmt"

	"github.com/govnet/govnet/agency"
	"github.com/govnet/govnet/api"
)

// Version is the only policy format version this package reads.
const Version = 1

// MaxRangePorts caps how many ports one tcp/N-M or udp/N-M spec may expand to.
const MaxRangePorts = 1024

// Policy is a parsed policy document. Values come from Parse; the slices
// keep the order of the document.
type Policy struct {
	File     string
	Version  int
	Groups   []*Group
	Services []*Service
	Rules    []*Rule
	Tests    []*Test
}

// Ref is a name, gateway id or agency code written in the policy, with
// where it was written.
type Ref struct {
	Name string
	Pos  Pos
}

// Group selects gateways. Level and Subtree filter the registry's agencies
// and combine with AND; the agencies, gateways and groups listed are added
// to what they select.
type Group struct {
	Name     string
	Pos      Pos
	Level    agency.Level // 0: any level
	Subtree  *Ref         // an agency code: the agency and everything under it
	Agencies []Ref        // agency codes: the gateways of exactly these agencies
	Gateways []Ref        // gateway ids
	Groups   []Ref        // other groups
}

// Service is a set of gateways and the ports they serve.
type Service struct {
	Name     string
	Pos      Pos
	Gateways []Ref // either Gateways ...
	Group    *Ref  // ... or the gateways of a group
	Ports    []PortSpec
}

// Rule allows traffic from every gateway of From to every gateway of To.
// A service in To brings its own ports; a group or gateway in To takes Ports.
type Rule struct {
	Index int // 1-based, as in error messages
	Pos   Pos
	From  []Ref // groups or gateway ids
	To    []Ref // services, groups or gateway ids
	Ports []PortSpec
}

// Test states that traffic from From to To on Port must be allowed (or
// denied) for every gateway pair they stand for.
type Test struct {
	Index  int // 1-based, as in error messages
	Pos    Pos
	From   Ref // an agency code (every gateway of it) or a gateway id
	To     Ref // a service, a gateway id or an agency code
	Port   PortSpec
	Expect bool // true: allow, false: deny
}

// PortSpec is tcp/N, udp/N, tcp/N-M, udp/N-M or icmp.
type PortSpec struct {
	Proto       string // api.ProtoTCP, api.ProtoUDP or api.ProtoICMP
	First, Last uint16 // both 0 for ICMP
	Pos         Pos
}

func (s PortSpec) String() string {
	switch {
	case s.Proto == api.ProtoICMP:
		return s.Proto
	case s.First == s.Last:
		return fmt.Sprintf("%s/%d", s.Proto, s.First)
	default:
		return fmt.Sprintf("%s/%d-%d", s.Proto, s.First, s.Last)
	}
}

// Summary describes the policy in one line, for logs and the CLI.
func (p *Policy) Summary() string {
	return fmt.Sprintf("version %d: %s, %s, %s, %s", p.Version,
		plural(len(p.Groups), "group"), plural(len(p.Services), "service"),
		plural(len(p.Rules), "rule"), plural(len(p.Tests), "test"))
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// names indexes a policy's groups and services by name; the first
// definition of a name wins (checkDocument reports the others). It is
// rebuilt by each call, so a Policy is never written after Parse and may be
// used from several goroutines.
type names struct {
	groups   map[string]*Group
	services map[string]*Service
}

func (p *Policy) names() names {
	nm := names{groups: make(map[string]*Group, len(p.Groups)), services: make(map[string]*Service, len(p.Services))}
	for _, g := range p.Groups {
		if _, dup := nm.groups[g.Name]; !dup {
			nm.groups[g.Name] = g
		}
	}
	for _, s := range p.Services {
		if _, dup := nm.services[s.Name]; !dup {
			nm.services[s.Name] = s
		}
	}
	return nm
}
