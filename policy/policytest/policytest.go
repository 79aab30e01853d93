// Package policytest generates registries and a policy of the shape and
// size govnet is built for, for the tests and benchmarks of policy
// compilation and of the controller's views.
package policytest

import (
	"encoding/base64"
	"fmt"
	"net/netip"

	"github.com/govnet/govnet/agency"
	"github.com/govnet/govnet/api"
)

// National returns the Government Office and 34 provinces, each with
// districts districts of communes communes, and one enrolled gateway per
// agency: gw1 is the Government Office's (it serves NDXP in Policy), then
// each province's, its districts' and their communes' in order. National(20,
// 29) is the national size: 20,435 gateways; National(2, 13) has 987.
func National(districts, communes int) ([]api.Agency, []api.Gateway) {
	var agencies []api.Agency
	var gateways []api.Gateway
	add := func(code string) {
		c := agency.MustParse(code)
		a := api.Agency{Code: code, Name: "Cơ quan " + code, Level: c.Level().String()}
		if p, ok := c.Parent(); ok {
			a.Parent = p.String()
		}
		agencies = append(agencies, a)
		gateways = append(gateways, Gateway(len(gateways)+1, code))
	}
	add("000.00.00.G22")
	for p := 1; p <= 34; p++ {
		add(fmt.Sprintf("000.00.00.H%02d", p))
		for d := 1; d <= districts; d++ {
			add(fmt.Sprintf("000.00.%02d.H%02d", d, p))
			for c := 1; c <= communes; c++ {
				add(fmt.Sprintf("000.%02d.%02d.H%02d", c, d, p))
			}
		}
	}
	return agencies, gateways
}

// Gateway returns enrolled gateway gw<n> of agency code, with a key, an
// overlay address and a LAN that no other n shares (n < 65,536).
func Gateway(n int, code string) api.Gateway {
	return api.Gateway{
		ID: fmt.Sprintf("gw%d", n), Agency: code, Status: api.StatusEnrolled,
		Endpoint:  fmt.Sprintf("192.0.2.%d:51820", n%250+1),
		PublicKey: base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "%032d", n)),
		OverlayIP: netip.AddrFrom4([4]byte{100, 64, byte(n >> 8), byte(n)}),
		LANs:      []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(n >> 8), byte(n), 0}), 24)},
	}
}

// Policy is what a national network runs: every commune reaches NDXP
// (gw1), provinces reach each other, and one province has rules of its
// own between its districts and its hub.
const Policy = `version: 1
groups:
  provinces: {level: province}
  communes: {level: commune}
  h01: {subtree: 000.00.00.H01}
  h01-districts: {subtree: 000.00.00.H01, level: district}
  h01-top: {agencies: [000.00.00.H01]}
services:
  ndxp: {gateways: [gw1], ports: [tcp/443, tcp/8443]}
  h01-hub: {group: h01-top, ports: [tcp/443]}
rules:
  - {from: [communes], to: [ndxp]}
  - {from: [provinces], to: [provinces], ports: [tcp/22, icmp]}
  - {from: [h01], to: [h01-districts], ports: [udp/5000-5010]}
  - {from: [h01-districts], to: [h01-hub]}
`
