package controller

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/hashicorp/raft"
)

// raftTLS is raft's stream layer: mutual TLS 1.3 between controller
// nodes, each presenting its node certificate. Raft's own TCP transport
// is plain and unauthenticated: anyone who reached raft_addr could send
// a node entries to append, or votes. Here a connection carries raft's
// messages only when both ends present a node certificate that this
// network's root verifies, issued by the node's own intermediate (see
// checkNodeChain), neither revoked in the inventory.
type raftTLS struct {
	net.Listener // completes each handshake (handshakeListener)
	advertise    net.Addr
	client       *tls.Config
	// nodeAt names the member whose raft address is address, if one is
	// recorded: the node a dial must reach (nil: no check).
	nodeAt func(address string) (string, bool)
}

// raftHandshakeTimeout bounds a raft connection's TLS handshake.
const raftHandshakeTimeout = 10 * time.Second

func (n *Node) newRaftTLS(bind string, advertise net.Addr) (*raftTLS, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	ln = n.limitConns(ln)
	verify := func(usage x509.ExtKeyUsage) func(tls.ConnectionState) error {
		return func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("raft: no node certificate presented")
			}
			_, err := n.checkNodeChain(cs.PeerCertificates, usage)
			return err
		}
	}
	server := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		GetCertificate:   n.getCert,
		ClientAuth:       tls.RequireAnyClientCert,
		VerifyConnection: verify(x509.ExtKeyUsageClientAuth),
	}
	client := &tls.Config{
		MinVersion:           tls.VersionTLS13,
		GetClientCertificate: n.getClientCert,
		// The chain and the peer's identity are checked below instead:
		// raft addresses are IP addresses a node certificate need not
		// name.
		InsecureSkipVerify: true,
		VerifyConnection:   verify(x509.ExtKeyUsageServerAuth),
	}
	nodeAt := func(address string) (string, bool) {
		for _, m := range n.State().Members() {
			if m.RaftAddr == address {
				return m.Node, true
			}
		}
		return "", false
	}
	return &raftTLS{Listener: newHandshakeListener(ln, server, raftHandshakeTimeout, n.log), advertise: advertise, client: client, nodeAt: nodeAt}, nil
}

func (l *raftTLS) Addr() net.Addr { return l.advertise }

func (l *raftTLS) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	cfg := l.client
	if l.nodeAt != nil {
		if want, ok := l.nodeAt(string(address)); ok {
			// The node recorded at that address, not another one there.
			cfg = l.client.Clone()
			verify := l.client.VerifyConnection
			cfg.VerifyConnection = func(cs tls.ConnectionState) error {
				if err := verify(cs); err != nil {
					return err
				}
				if id, _ := ca.IdentityOf(cs.PeerCertificates[0]); id.Name != want {
					return fmt.Errorf("raft: %s answers as node %s, not %s", address, id.Name, want)
				}
				return nil
			}
		}
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: cfg}
	return d.Dial("tcp", string(address))
}

// checkNodeChain verifies peers (a peer's certificates as presented) to
// this network's root for usage and says whether the chain is a
// controller node's: the leaf names a node; the intermediate that
// verifiably issued it (not whatever the peer sent next) is that node's
// own, by its name, and is not recorded as another node's issuer (any
// node's intermediate can sign a node certificate for any name; only the
// custodians' root signs a node's intermediate); the inventory has revoked
// neither (a removed node whose intermediate the root's CRL revoked stays
// out); and the leaf carries the key recorded for its serial.
func (n *Node) checkNodeChain(peers []*x509.Certificate, usage x509.ExtKeyUsage) (ca.Identity, error) {
	chain, err := n.verifier.Verify(peers, usage, time.Now())
	if err != nil {
		return ca.Identity{}, fmt.Errorf("%w: node certificate: %w", ErrForbidden, err)
	}
	id, err := ca.IdentityOf(chain[0])
	if err != nil || id.Kind != ca.KindNode {
		return id, fmt.Errorf("%w: not a controller node's certificate", ErrForbidden)
	}
	if len(chain) < 3 {
		return id, fmt.Errorf("%w: node %s: its certificate must be issued by its own intermediate, not by the root", ErrForbidden, id.Name)
	}
	inter := chain[1]
	if want := ca.IntermediateCommonName(id.Name); inter.Subject.CommonName != want {
		return id, fmt.Errorf("%w: node %s's certificate was issued by %q, not by its own intermediate (%q): a node joins with the certificate its own intermediate issued",
			ErrForbidden, id.Name, inter.Subject.CommonName, want)
	}
	st := n.State()
	if rec, ok := st.issuer(ca.IssuerID(inter)); ok && rec.Node != "" && rec.Node != id.Name {
		return id, fmt.Errorf("%w: node %s's certificate was issued by the intermediate of node %s", ErrForbidden, id.Name, rec.Node)
	}
	for _, c := range chain[:2] {
		if rec, ok := st.Certificate(ca.Serial(c)); ok && rec.Status == api.CertRevoked {
			return id, fmt.Errorf("%w: node %s: certificate %s (%s) is revoked", ErrForbidden, id.Name, rec.Serial, c.Subject.CommonName)
		}
	}
	if err := st.keyIsRecorded(chain[0]); err != nil {
		return id, fmt.Errorf("%w: node %s: %w", ErrForbidden, id.Name, err)
	}
	return id, nil
}
