package policy

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"testing"

	"github.com/govnet/govnet/api"
)

// bigRegistry is a state the size govnet is built for: 34 provinces, 20
// districts each, 29 communes per district, one gateway per agency, and
// the Government Office: 20,435 gateways.
func bigRegistry() *Registry {
	reg := &Registry{}
	n := 0
	add := func(code, level string) {
		reg.Agencies = append(reg.Agencies, api.Agency{Code: code, Level: level})
		n++
		ip := netip.AddrFrom4([4]byte{100, 64, byte(n >> 8), byte(n)})
		reg.Gateways = append(reg.Gateways, api.Gateway{
			ID: fmt.Sprintf("gw%d", n), Agency: code, Status: api.StatusEnrolled,
			PublicKey: base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("%032d", n))),
			OverlayIP: ip, LANs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(n >> 8), byte(n), 0}), 24)},
		})
	}
	add("000.00.00.G22", "central")
	for p := 1; p <= 34; p++ {
		add(fmt.Sprintf("000.00.00.H%02d", p), "province")
		for d := 1; d <= 20; d++ {
			add(fmt.Sprintf("000.00.%02d.H%02d", d, p), "district")
			for c := 1; c <= 29; c++ {
				add(fmt.Sprintf("000.%02d.%02d.H%02d", c, d, p), "commune")
			}
		}
	}
	return reg
}

const bigPolicy = `version: 1
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

func BenchmarkCompile(b *testing.B) {
	reg := bigRegistry()
	p, err := Parse("big.yaml", []byte(bigPolicy))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		views, err := p.Compile(reg)
		if err != nil {
			b.Fatal(err)
		}
		if len(views) != len(reg.Gateways) {
			b.Fatalf("%d views", len(views))
		}
	}
}
