package policy

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"os"

	"github.com/goccy/go-yaml"

	"github.com/govnet/govnet/agency"
	"github.com/govnet/govnet/api"
)

// maxRegistryFile bounds a registry file read for an offline check; the
// whole network (tens of thousands of gateways) fits well inside it.
const maxRegistryFile = 64 << 20

// RegistryFile is the form of a registry written for `govnetctl policy
// check --registry`: the agencies and gateways a policy is tested against
// offline. It is YAML (or JSON, which `govnetctl registry export` writes):
//
//	agencies:
//	  - {code: 000.00.00.H29, name: Quảng Ninh}
//	  - {code: 000.12.04.H29, name: Phường Hồng Gai}
//	gateways:
//	  - {id: gw-h29, agency: 000.00.00.H29, lans: [10.29.0.0/16]}
//
// An agency's level and parent follow from its code unless parent is
// given. A gateway without a status is taken as enrolled: offline there is
// no enrollment, and the file says which gateways the tests may use. A
// gateway without an overlay address or WireGuard key is given a
// placeholder one, since the policy never reads them.
type RegistryFile struct {
	Agencies []api.Agency  `json:"agencies"`
	Gateways []api.Gateway `json:"gateways"`
}

// LoadRegistry reads and checks a registry file.
func LoadRegistry(path string) (*Registry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	defer f.Close()
	src, err := io.ReadAll(io.LimitReader(f, maxRegistryFile+1))
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", path, err)
	}
	if len(src) > maxRegistryFile {
		return nil, fmt.Errorf("registry %s: larger than %d MiB", path, maxRegistryFile>>20)
	}
	return ParseRegistry(path, src)
}

// ParseRegistry decodes a registry file's contents; filename is used in
// errors, which name the entry at fault (and the line, for YAML errors).
func ParseRegistry(filename string, src []byte) (*Registry, error) {
	rf, err := decodeRegistry(src)
	if err != nil {
		return nil, fmt.Errorf("registry %s: %s", filename, yaml.FormatError(err, false, true))
	}
	var problems ErrorList
	bad := func(at string, format string, args ...any) {
		e := &Error{File: filename, Msg: fmt.Sprintf(format, args...)}
		e.Line, e.Column = locate(src, at)
		problems = append(problems, e)
	}
	reg := &Registry{Agencies: make([]api.Agency, 0, len(rf.Agencies)), Gateways: make([]api.Gateway, 0, len(rf.Gateways))}
	codes := map[string]bool{}
	for i, a := range rf.Agencies {
		c, err := agency.Parse(a.Code)
		if err != nil {
			bad(fmt.Sprintf("$.agencies[%d]", i), "agencies[%d]: %v", i, err)
			continue
		}
		if codes[c.String()] {
			bad(fmt.Sprintf("$.agencies[%d]", i), "agencies[%d]: agency %s appears twice", i, c)
			continue
		}
		codes[c.String()] = true
		a.Code, a.Level = c.String(), c.Level().String()
		if p, ok := c.Parent(); ok && a.Parent == "" {
			a.Parent = p.String()
		}
		reg.Agencies = append(reg.Agencies, a)
	}
	for i, a := range reg.Agencies {
		if a.Parent == a.Code {
			bad(fmt.Sprintf("$.agencies[%d]", i), "agency %s: its own parent", a.Code)
			continue
		}
		if a.Parent != "" && !codes[a.Parent] {
			bad(fmt.Sprintf("$.agencies[%d]", i), "agency %s: its parent %s is not in the file (list every agency above it)", a.Code, a.Parent)
		}
	}
	ids := map[string]bool{}
	used := map[netip.Addr]bool{}
	for _, g := range rf.Gateways {
		if g.OverlayIP.IsValid() {
			used[g.OverlayIP] = true
		}
	}
	next := netip.MustParseAddr("100.64.0.1")
	for i, g := range rf.Gateways {
		switch {
		case g.ID == "":
			bad(fmt.Sprintf("$.gateways[%d]", i), "gateways[%d]: no id", i)
			continue
		case ids[g.ID]:
			bad(fmt.Sprintf("$.gateways[%d]", i), "gateways[%d]: gateway %s appears twice", i, g.ID)
			continue
		case !codes[g.Agency]:
			bad(fmt.Sprintf("$.gateways[%d]", i), "gateways[%d]: gateway %s: agency %q is not in the file", i, g.ID, g.Agency)
			continue
		}
		ids[g.ID] = true
		if g.Status == "" {
			g.Status = api.StatusEnrolled
		}
		switch g.Status {
		case api.StatusPending, api.StatusEnrolled, api.StatusRevoked, api.StatusDecommissioned:
		default:
			// A misspelt status would leave the gateway out of every
			// view without a word.
			bad(fmt.Sprintf("$.gateways[%d]", i), "gateways[%d]: gateway %s: status %q: want %s, %s, %s or %s", i, g.ID, g.Status,
				api.StatusPending, api.StatusEnrolled, api.StatusRevoked, api.StatusDecommissioned)
			continue
		}
		if g.Status == api.StatusEnrolled {
			if !g.OverlayIP.IsValid() {
				for used[next] {
					next = next.Next()
				}
				g.OverlayIP, used[next] = next, true
			}
			if g.PublicKey == "" {
				g.PublicKey = placeholderKey(i)
			}
		}
		reg.Gateways = append(reg.Gateways, g)
	}
	if err := problems.Err(); err != nil {
		return nil, err
	}
	return reg, nil
}

// decodeRegistry decodes strictly, turning a panic of the YAML decoder
// (it has some on malformed input) into an error.
func decodeRegistry(src []byte) (rf RegistryFile, err error) {
	if err := checkFlowDepth(src); err != nil {
		return rf, err
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("YAML decoder failed: %v", r)
		}
	}()
	err = yaml.NewDecoder(bytes.NewReader(src), yaml.DisallowUnknownField(), yaml.UseJSONUnmarshaler()).Decode(&rf)
	return rf, err
}

// locate finds the line and column of the node at a YAML path, or 0, 0.
func locate(src []byte, path string) (line, col int) {
	p, err := yaml.PathString(path)
	if err != nil {
		return 0, 0
	}
	f, err := parseYAML(src)
	if err != nil {
		return 0, 0
	}
	n, err := p.FilterFile(f)
	if err != nil || n == nil || n.GetToken() == nil {
		return 0, 0
	}
	pos := n.GetToken().Position
	return pos.Line, pos.Column
}

// placeholderKey is a well-formed WireGuard public key, distinct per
// gateway, for registry files that leave keys out.
func placeholderKey(i int) string {
	var k [32]byte
	copy(k[:], "govnet-offline-placeholder")
	binary.BigEndian.PutUint32(k[28:], uint32(i))
	return base64.StdEncoding.EncodeToString(k[:])
}
