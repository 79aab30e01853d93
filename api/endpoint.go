package api

import (
	"fmt"
	"net/netip"
)

// CheckEndpoint says what is wrong with a gateway's transport endpoint,
// where the other gateways send its WireGuard packets: an IP address and
// a UDP port, "192.0.2.11:51820" or "[2001:db8::11]:51820". A name is
// refused: the agents would have to look it up, and an endpoint that
// resolves differently on each gateway, or not at all while DNS is down,
// splits the network.
func CheckEndpoint(s string) error {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return fmt.Errorf("endpoint %q: want IP:port, e.g. 192.0.2.11:51820", s)
	}
	a := ap.Addr()
	switch {
	case ap.Port() == 0:
		return fmt.Errorf("endpoint %q: port 0: want 1-65535", s)
	case a.IsUnspecified() || a.IsMulticast():
		return fmt.Errorf("endpoint %q: %s is not a unicast address", s, a)
	case a.Zone() != "" || a.IsLinkLocalUnicast():
		return fmt.Errorf("endpoint %q: a link-local address does not reach other sites", s)
	}
	return nil
}
