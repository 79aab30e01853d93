package controller

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"testing"
	"time"
)

// TestHandshakeListener: Accept hands over connections whose handshake
// is complete; a client that never finishes its handshake holds up no
// one and is dropped at the timeout; a failed handshake is never handed
// over; Close ends Accept.
func TestHandshakeListener(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "node"}, DNSNames: []string{"node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl := newHandshakeListener(ln, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, 500*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer hl.Close()
	addr := ln.Addr().String()

	// A client that connects and says nothing.
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// A client that does not trust the node: its handshake fails.
	go func() {
		if c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "node", RootCAs: x509.NewCertPool()}); err == nil {
			c.Close()
		}
	}()
	// A good client, after both.
	time.Sleep(50 * time.Millisecond)
	go func() {
		c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "node", RootCAs: roots})
		if err != nil {
			t.Error(err)
			return
		}
		c.Write([]byte("x"))
		c.Close()
	}()
	c, err := hl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	tc, ok := c.(*tls.Conn)
	if !ok || !tc.ConnectionState().HandshakeComplete {
		t.Fatalf("accepted %T before its handshake completed", c)
	}
	c.Close()
	// The silent client is dropped at the timeout.
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("silent client: %v, want EOF once the handshake timed out", err)
	}

	done := make(chan error, 1)
	go func() { _, err := hl.Accept(); done <- err }()
	hl.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still blocked after Close")
	}
}
