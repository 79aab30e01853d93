package controller

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// TestNodeCertRenewal: two thirds into its life a node renews its own
// certificate, records it, writes it over its file and serves it, and a
// restart keeps it.
func TestNodeCertRenewal(t *testing.T) {
	// The first certificate was issued two minutes ago: a clock moved
	// past its due time is not past the due time of the next.
	cfg := testConfig(t, func(o *InitOptions) {
		o.Config.Profiles.Node = ca.MinLifetime
		o.Now = time.Now().Add(-2 * time.Minute)
	})
	var ahead atomic.Int64 // how far the node's clock runs ahead
	clock := func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	n := startNodeAt(t, cfg, clock)
	defer func() { n.Close() }()
	first := n.cert.Load().Leaf
	if due := nodeCertDue(first); due.Sub(first.NotBefore.Add(ca.Backdate)).Round(time.Second) != ca.MinLifetime*2/3 {
		t.Fatalf("due %s after issue, want two thirds of %s", due.Sub(first.NotBefore.Add(ca.Backdate)), ca.MinLifetime)
	}
	time.Sleep(200 * time.Millisecond)
	if got := n.cert.Load().Leaf; ca.Serial(got) != ca.Serial(first) {
		t.Fatalf("renewed before it was due")
	}

	// Move the node's clock past the due time and wake its duties.
	ahead.Store(int64(time.Until(nodeCertDue(first)) + time.Second))
	select {
	case n.crlWake <- struct{}{}:
	default:
	}
	var renewed *tls.Certificate
	waitFor(t, 10*time.Second, "the node certificate renewed", func() error {
		if renewed = n.cert.Load(); ca.Serial(renewed.Leaf) == ca.Serial(first) {
			return errString("still the first certificate")
		}
		return nil
	})
	serial := ca.Serial(renewed.Leaf)
	rec, ok := n.State().Certificate(serial)
	if !ok || rec.Kind != ca.KindNode || rec.Requester != "node:ctl1" || rec.Status != api.CertValid || rec.RenewedFrom != ca.Serial(first) {
		t.Fatalf("inventory record of %s: %+v, %v", serial, rec, ok)
	}
	if got := renewed.Leaf; got.Subject.CommonName != "ctl1" || !slices.Equal(got.DNSNames, first.DNSNames) ||
		len(got.IPAddresses) != len(first.IPAddresses) || bytes.Equal(got.RawSubjectPublicKeyInfo, first.RawSubjectPublicKeyInfo) {
		t.Fatalf("renewed certificate: CN %q, DNS %v, IPs %v; was DNS %v, IPs %v, and another key", got.Subject.CommonName, got.DNSNames, got.IPAddresses, first.DNSNames, first.IPAddresses)
	}
	// The new key is in the token; the one it replaced goes after a grace.
	live := *n.tlsKeyLabel.Load()
	if labels, err := nodeTLSKeyLabels(n.token, "ctl1"); err != nil || !slices.Contains(labels, live) || !slices.Contains(labels, TLSKeyLabel("ctl1")) || live == TLSKeyLabel("ctl1") {
		t.Fatalf("token keys after the renewal %v (%v): want init's and the live %s", labels, err, live)
	}
	if got := servedSerial(t, n); got != serial {
		t.Fatalf("API serves %s, want the renewed %s", got, serial)
	}
	op := person(t, cfg, n, "operator1")
	if _, err := op.Agencies(context.Background()); err != nil {
		t.Fatalf("a person's call after the renewal: %v", err)
	}
	b, err := os.ReadFile(cfg.pkiPath(nodeFile))
	if err != nil {
		t.Fatal(err)
	}
	if onDisk, err := ca.ParsePEM(b); err != nil || ca.Serial(onDisk[0]) != serial {
		t.Fatalf("node.pem: %v, %v; want %s", onDisk, err, serial)
	}

	n.Close()
	n = startNode(t, cfg)
	if got := servedSerial(t, n); got != serial {
		t.Fatalf("after a restart the API serves %s, want %s", got, serial)
	}
	if got := *n.tlsKeyLabel.Load(); got != live {
		t.Fatalf("after a restart the node uses key %s, want %s", got, live)
	}
	waitFor(t, 10*time.Second, "the replaced TLS key destroyed", func() error {
		if labels, _ := nodeTLSKeyLabels(n.token, "ctl1"); !slices.Equal(labels, []string{live}) {
			return fmt.Errorf("token keys %v", labels)
		}
		return nil
	})
}

// TestNodeCertRenewalStopsAtIntermediate: a node certificate cut short
// by its intermediate's expiry is not renewed again and again (each
// renewal would end at the same moment, and be due at once).
func TestNodeCertRenewalStopsAtIntermediate(t *testing.T) {
	// Issued five years minus three minutes ago, for five years: the
	// node certificate ends with its intermediate, three minutes from
	// now, and is long due.
	cfg := testConfig(t, func(o *InitOptions) {
		o.Config.Profiles.Node = ca.IntermediateLifetime
		o.Now = time.Now().Add(-ca.IntermediateLifetime + 3*time.Minute)
	})
	n := startNode(t, cfg)
	defer n.Close()
	first := n.cert.Load().Leaf
	if !first.NotAfter.Equal(n.ca.Intermediate().NotAfter) {
		t.Fatalf("node certificate ends %s, intermediate %s: want the same", first.NotAfter, n.ca.Intermediate().NotAfter)
	}
	count := func() int {
		nodes := 0
		for _, c := range n.State().Certificates(CertFilter{}) {
			if c.Kind == ca.KindNode {
				nodes++
			}
		}
		return nodes
	}
	// The node records its first certificate itself once it leads.
	waitFor(t, 10*time.Second, "the first node certificate recorded", func() error {
		if _, ok := n.State().Certificate(ca.Serial(first)); !ok {
			return errString("not yet")
		}
		return nil
	})
	before := count()
	for range 5 {
		select {
		case n.crlWake <- struct{}{}:
		default:
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := n.cert.Load().Leaf; ca.Serial(got) != ca.Serial(first) {
		t.Fatalf("renewed to %s, which ends %s", ca.Serial(got), got.NotAfter)
	}
	if after := count(); after != before {
		t.Fatalf("%d node certificates recorded, were %d", after, before)
	}
}

// servedSerial is the serial of the certificate n's API serves.
func servedSerial(t *testing.T, n *Node) string {
	t.Helper()
	conn, err := tls.Dial("tcp", n.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return ca.Serial(conn.ConnectionState().PeerCertificates[0])
}

type errString string

func (e errString) Error() string { return string(e) }

// TestNodeCertsRenewInCluster (make e2e-long: about six minutes): a
// cluster whose node certificates live five minutes outlives the first
// ones. Each node renews its own; raft, the forwarding of writes and the
// API go on with the renewed certificates after the first have expired.
func TestNodeCertsRenewInCluster(t *testing.T) {
	if os.Getenv("GOVNET_LONG") == "" {
		t.Skip("waits for node certificates to expire; set GOVNET_LONG=1 (make e2e-long)")
	}
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.Profiles.Node = ca.MinLifetime })
	c.startThree(t)
	served := func(i int) (*x509.Certificate, error) {
		conn, err := tls.Dial("tcp", c.nodes[i].cfg.APIAddr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0], nil
	}
	var expires time.Time
	first := map[int]string{}
	for i := range c.nodes {
		leaf, err := served(i)
		if err != nil {
			t.Fatal(err)
		}
		first[i] = ca.Serial(leaf)
		if leaf.NotAfter.After(expires) {
			expires = leaf.NotAfter
		}
	}
	waitFor(t, time.Until(expires), "every node to renew its certificate before it expires", func() error {
		for i := range c.nodes {
			leaf, err := served(i)
			if err != nil {
				return err
			}
			if ca.Serial(leaf) == first[i] {
				return fmt.Errorf("%s still serves %s", c.nodes[i].name, first[i])
			}
		}
		return nil
	})
	time.Sleep(time.Until(expires.Add(10 * time.Second)))
	c.waitHealthy(30 * time.Second)
	ldr, err := c.leader()
	if err != nil {
		t.Fatal(err)
	}
	follower := (ldr + 1) % 3
	if _, err := c.op[follower].AddAgency(context.Background(), api.Agency{Code: "000.00.00.H01", Name: "after expiry"}); err != nil {
		t.Fatalf("a write through follower %s after the first certificates expired: %v", c.nodes[follower].name, err)
	}
	certs, err := c.op[ldr].Certificates(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	nodes := 0
	for _, rec := range certs {
		if rec.Kind == ca.KindNode {
			nodes++
		}
	}
	if nodes < 6 {
		t.Fatalf("%d node certificates in the inventory, want at least 6 (three first, three renewed)", nodes)
	}
}
