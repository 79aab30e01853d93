package controller

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/internal/atomicfile"
)

// A node's certificate is what its API serves and what it presents to
// the other nodes, over raft and the internal routes. The node renews it
// itself, with its own intermediate and the same TLS key in its token,
// two thirds into its life: one that expired would cut it off from the
// cluster and its gateways.

func (n *Node) getCert(*tls.ClientHelloInfo) (*tls.Certificate, error) { return n.cert.Load(), nil }

func (n *Node) getClientCert(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return n.cert.Load(), nil
}

// nodeCertDue is when a node certificate is due for renewal: when a third
// of the lifetime it was issued for is left (its NotBefore is set back by
// ca.Backdate, which is not lifetime).
func nodeCertDue(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore) - ca.Backdate
	return leaf.NotAfter.Add(-life / 3)
}

// renewNodeCertIfDue renews this node's certificate once it is due: it
// issues the new one for the same name, addresses and key, records it in
// the inventory (so that the other nodes' checks find its key), writes it
// over the node's certificate file and serves it from then on. Only
// issuerDuties calls it; a certificate issued but not yet recorded (no
// leader) is kept for the next attempt rather than issued again.
func (n *Node) renewNodeCertIfDue(ctx context.Context) error {
	cur := n.cert.Load()
	if n.now().Before(nodeCertDue(cur.Leaf)) {
		return nil
	}
	// A certificate never outlives its issuer: once the intermediate
	// expires before the current certificate could be replaced by a
	// longer-lived one, only a new intermediate (the ceremony) helps.
	inter := n.ca.Intermediate()
	if !inter.NotAfter.After(cur.Leaf.NotAfter) {
		return fmt.Errorf("node certificate due for renewal, but its intermediate expires at %s, no later than it: have the custodians sign a new intermediate for this node",
			inter.NotAfter.UTC().Format(time.RFC3339))
	}
	// Nor does a renewal help that would end no later than the current
	// certificate (profiles.node lowered below what is left of it): wait.
	if end := time.Now().Add(n.cfg.profiles().Node); !end.After(cur.Leaf.NotAfter) {
		return fmt.Errorf("node certificate due for renewal, but one issued now for profiles.node (%s) would end at %s, no later than the current one (%s)",
			n.cfg.profiles().Node, end.UTC().Format(time.RFC3339), cur.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	next := n.nextNodeCert
	if next == nil || ca.Serial(next) == "" {
		key, ok := cur.PrivateKey.(crypto.Signer)
		if !ok {
			return fmt.Errorf("node key %T cannot sign a CSR", cur.PrivateKey)
		}
		csr, err := ca.NewCSR(key, n.cfg.Node)
		if err != nil {
			return err
		}
		chain, err := n.ca.Issue(ctx, csr, ca.NodeProfile(n.cfg.Node, cur.Leaf.DNSNames, cur.Leaf.IPAddresses))
		if err != nil {
			return fmt.Errorf("issue the node certificate: %w", err)
		}
		if !chain[0].NotAfter.After(cur.Leaf.NotAfter) {
			return fmt.Errorf("the renewed node certificate would expire at %s, no later than the current one", chain[0].NotAfter.UTC().Format(time.RFC3339))
		}
		next, n.nextNodeCert = chain[0], chain[0]
	}
	rec := n.certRecord(next)
	rec.Requester, rec.RenewedFrom = "node:"+n.cfg.Node, ca.Serial(cur.Leaf)
	if _, recorded := n.State().Certificate(rec.Serial); !recorded {
		if _, err := n.submit(ctx, CmdCertRecord, &CertRecordRequest{Meta: n.meta("node:" + n.cfg.Node), Certs: []api.Certificate{rec}}); err != nil && !errors.Is(err, ErrConflict) {
			return fmt.Errorf("record the renewed node certificate %s: %w", rec.Serial, err)
		}
	}
	if err := atomicfile.Write(n.cfg.pkiPath(nodeFile), ca.EncodePEM(next), 0o644); err != nil {
		return fmt.Errorf("write the renewed node certificate: %w", err)
	}
	n.cert.Store(&tls.Certificate{Certificate: [][]byte{next.Raw, n.ca.Intermediate().Raw}, PrivateKey: cur.PrivateKey, Leaf: next})
	// The other nodes check a caller's certificate on every internal
	// call, not only at the handshake: calls go on new connections, which
	// present the renewed one, and the old connections close once idle.
	old := n.peers.Swap(newPeerClient(n.verifier.Roots(), n.getClientCert))
	old.CloseIdleConnections()
	n.nextNodeCert = nil
	n.log.Info("node certificate renewed", "serial", rec.Serial, "old_serial", ca.Serial(cur.Leaf),
		"not_after", next.NotAfter.UTC().Format(time.RFC3339), "renew_at", nodeCertDue(next).UTC().Format(time.RFC3339))
	return nil
}
