package controller

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// defaultMaxConnsPerIP is how many connections one address may hold open
// on one listener when the config does not say.
const defaultMaxConnsPerIP = 256

// connLimitListener caps the connections one client address holds open
// at once on a listener: a client that opens them faster than it closes
// them (or never completes a handshake) cannot take every goroutine,
// file descriptor and handshake the node has. Connections over the cap
// are closed as soon as they are accepted.
type connLimitListener struct {
	net.Listener
	max     int
	log     *slog.Logger
	refused *atomic.Uint64 // the node's count, over all its listeners

	mu   sync.Mutex
	open map[netip.Addr]int
}

func newConnLimitListener(ln net.Listener, max int, refused *atomic.Uint64, log *slog.Logger) *connLimitListener {
	return &connLimitListener{Listener: ln, max: max, log: log, refused: refused, open: map[netip.Addr]int{}}
}

// Accept returns the next connection within its address's cap.
func (l *connLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c)
		l.mu.Lock()
		if l.open[ip] >= l.max {
			l.mu.Unlock()
			l.refused.Add(1)
			l.log.Debug("connection refused: too many from one address", "remote", c.RemoteAddr().String(), "max", l.max)
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
	return newConnLimitListener(ln, n.cfg.maxConnsPerIP(), &n.connsRefused, n.log)
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
