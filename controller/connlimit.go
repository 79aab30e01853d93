package controller

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// defaultMaxConnsPerIP is how many connections one address may hold open
// on one listener when the config does not say.
const defaultMaxConnsPerIP = 256

// connLimitListener caps the connections one client address holds open
// at once on a listener: a client that opens them faster than it closes
// them (or never completes a handshake) cannot take every goroutine,
// file descriptor and handshake the node has. Connections over the cap
// are closed as soon as they are accepted. An IPv6 client counts by its
// /64 (one host can take any address in it); the cluster's own nodes
// (exempt) are not counted.
type connLimitListener struct {
	net.Listener
	max     int
	log     *slog.Logger
	refused *atomic.Uint64 // the node's count, over all its listeners
	exempt  func(netip.Addr) bool

	mu     sync.Mutex
	open   map[netip.Addr]int
	warned time.Time // the last warning of a refusal (one a minute)
}

func newConnLimitListener(ln net.Listener, max int, refused *atomic.Uint64, exempt func(netip.Addr) bool, log *slog.Logger) *connLimitListener {
	return &connLimitListener{Listener: ln, max: max, log: log, refused: refused, exempt: exempt, open: map[netip.Addr]int{}}
}

// Accept returns the next connection within its address's cap.
func (l *connLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c)
		if l.exempt != nil && l.exempt(ip) {
			return c, nil
		}
		if ip.Is6() {
			ip = netip.PrefixFrom(ip, 64).Masked().Addr()
		}
		l.mu.Lock()
		if l.open[ip] >= l.max {
			warn := time.Since(l.warned) > time.Minute
			if warn {
				l.warned = time.Now()
			}
			l.mu.Unlock()
			l.refused.Add(1)
			if warn {
				l.log.Warn("connections refused: an address holds max_conns_per_ip open (a NAT or load balancer in front needs a higher cap)",
					"remote", c.RemoteAddr().String(), "max", l.max)
			}
			c.Close()
			continue
		}
		l.open[ip]++
		l.mu.Unlock()
		return &limitedConn{Conn: c, release: sync.OnceFunc(func() { l.release(ip) })}, nil
	}
}

func (l *connLimitListener) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[ip]--; l.open[ip] <= 0 {
		delete(l.open, ip)
	}
}

// limitConns caps ln's connections per client address (max_conns_per_ip).
func (n *Node) limitConns(ln net.Listener) net.Listener {
	return newConnLimitListener(ln, n.cfg.maxConnsPerIP(), &n.connsRefused, n.isMemberAddr, n.log)
}

// isMemberAddr says whether ip is the API or raft address of a member of
// the cluster (another node relays OCSP and forwards writes from it).
func (n *Node) isMemberAddr(ip netip.Addr) bool {
	if n.fsm == nil {
		return false
	}
	for _, m := range n.State().Members() {
		for _, a := range []string{m.APIAddr, m.RaftAddr} {
			if ap, err := netip.ParseAddrPort(a); err == nil && ap.Addr().Unmap() == ip {
				return true
			}
		}
	}
	return false
}

// remoteIP is the address a connection comes from (IPv4 in IPv6 unmapped).
func remoteIP(c net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// limitedConn gives its place back when it is closed.
type limitedConn struct {
	net.Conn
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}
