package controller

import (
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/hsm"
	"github.com/govnet/govnet/internal/atomicfile"
)

// A node's certificate is what its API serves and what it presents to
// the other nodes, over raft and the internal routes. The node renews it
// itself, with its own intermediate, two thirds into its life: one that
// expired would cut it off from the cluster and its gateways.
//
// Each renewal is for a new TLS key, generated in the node's token
// (TLSKeyLabel(node) + "+" + random hex; init made TLSKeyLabel(node)),
// so that a key serves one certificate's life. The certificate file says
// which key is live: a start finds it by its public key (nodeTLSKey). The
// key a renewal replaced is destroyed a little later (oldTLSKeysGrace,
// for handshakes that began with it), and at every start.

// oldTLSKeysGrace is how long a replaced node TLS key is kept.
const oldTLSKeysGrace = time.Minute

// nodeTLSKey returns the key in tok that cert, node's certificate,
// certifies, and its label.
func nodeTLSKey(tok *hsm.Token, node string, cert *x509.Certificate) (crypto.Signer, string, error) {
	labels, err := nodeTLSKeyLabels(tok, node)
	if err != nil {
		return nil, "", err
	}
	var errs []error
	for _, label := range labels {
		// A key a crash left half destroyed (a private object without
		// its public one) is not the live one: pass it.
		key, err := tok.Signer(label)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ca.SamePublicKey(key.Public(), cert.PublicKey) {
			return key, label, nil
		}
	}
	return nil, "", fmt.Errorf("token %q holds no TLS key of node %s for its certificate %s (keys %v): %w", tok.Label(), node, ca.Serial(cert), labels, errors.Join(errs...))
}

// nodeTLSKeyLabels returns the labels of node's TLS keys in tok.
func nodeTLSKeyLabels(tok *hsm.Token, node string) ([]string, error) {
	keys, err := tok.Keys()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, k := range keys {
		if k.Label == TLSKeyLabel(node) || strings.HasPrefix(k.Label, TLSKeyLabel(node)+"+") {
			out = append(out, k.Label)
		}
	}
	return out, nil
}

// dropOldTLSKeys destroys this node's TLS keys other than the live one.
func (n *Node) dropOldTLSKeys() error {
	labels, err := nodeTLSKeyLabels(n.token, n.cfg.Node)
	if err != nil {
		return err
	}
	live := n.tlsKeyLabel.Load()
	var errs []error
	for _, label := range labels {
		if label == *live {
			continue
		}
		if err := n.token.DestroyKey(label); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
			errs = append(errs, err)
			continue
		}
		n.log.Info("destroyed a node TLS key no longer in use", "key", label)
	}
	return errors.Join(errs...)
}

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
	if at := n.oldTLSKeysAt; !at.IsZero() && time.Since(at) >= oldTLSKeysGrace {
		if err := n.dropOldTLSKeys(); err != nil {
			n.log.Warn("destroy node TLS keys no longer in use", "err", err)
		}
		n.oldTLSKeysAt = time.Time{}
	}
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
	next, key := n.nextNodeCert, n.nextNodeKey
	if next == nil || ca.Serial(next) == "" {
		var err error
		if next, key, err = n.issueNodeCert(ctx, cur.Leaf); err != nil {
			return err
		}
		n.nextNodeCert, n.nextNodeKey = next, key
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
	n.cert.Store(&tls.Certificate{Certificate: [][]byte{next.Raw, n.ca.Intermediate().Raw}, PrivateKey: key.signer, Leaf: next})
	n.tlsKeyLabel.Store(&key.label)
	n.oldTLSKeysAt = time.Now()
	// The other nodes check a caller's certificate on every internal
	// call, not only at the handshake: calls go on new connections, which
	// present the renewed one, and the old connections close once idle.
	old := n.peers.Swap(newPeerClient(n.verifier.Roots(), n.getClientCert))
	old.CloseIdleConnections()
	n.nextNodeCert, n.nextNodeKey = nil, nodeKey{}
	n.log.Info("node certificate renewed", "serial", rec.Serial, "old_serial", ca.Serial(cur.Leaf), "key", key.label,
		"not_after", next.NotAfter.UTC().Format(time.RFC3339), "renew_at", nodeCertDue(next).UTC().Format(time.RFC3339))
	return nil
}

// nodeKey is a node TLS key in the token.
type nodeKey struct {
	signer crypto.Signer
	label  string
}

// issueNodeCert issues the certificate that renews cur, for a new key in
// the token.
func (n *Node) issueNodeCert(ctx context.Context, cur *x509.Certificate) (_ *x509.Certificate, key nodeKey, err error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return nil, key, err
	}
	key.label = TLSKeyLabel(n.cfg.Node) + "+" + hex.EncodeToString(b)
	if key.signer, err = n.token.GenerateKey(key.label, elliptic.P256()); err != nil {
		return nil, key, fmt.Errorf("generate the next node TLS key: %w", err)
	}
	defer func() {
		if err != nil { // the next attempt makes another
			err = errors.Join(err, n.token.DestroyKey(key.label))
		}
	}()
	csr, err := ca.NewCSR(key.signer, n.cfg.Node)
	if err != nil {
		return nil, key, err
	}
	chain, err := n.ca.Issue(ctx, csr, ca.NodeProfile(n.cfg.Node, cur.DNSNames, cur.IPAddresses))
	if err != nil {
		return nil, key, fmt.Errorf("issue the node certificate: %w", err)
	}
	if !chain[0].NotAfter.After(cur.NotAfter) {
		return nil, key, fmt.Errorf("the renewed node certificate would expire at %s, no later than the current one", chain[0].NotAfter.UTC().Format(time.RFC3339))
	}
	return chain[0], key, nil
}
