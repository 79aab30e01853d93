package controller

import (
	"context"
	"crypto/x509"
	"errors"
	"sync"

	"github.com/govnet/govnet/ca"
)

// issuePool runs gateways' certificate issuances (enrollments and
// renewals) on a few long-lived goroutines. At most their number sign at
// once: a network renewing on an officer's call queues here instead of
// thousands of issuances sharing the cores with raft. And the deep stack
// an issuance needs (ASN.1 encoding, the lints) is grown once per pool
// goroutine instead of on each of the thousands of stream goroutines
// that ask for one: growing and copying those stacks was 5.5% of the
// nodes' CPU in a re-issue of 20,000 gateways. People's and the nodes'
// own certificates, few and asked for by someone waiting, do not queue
// behind such a wave: they are issued where they are asked for.
type issuePool struct {
	jobs chan func()
	stop <-chan struct{} // closed when the node shuts down
}

var errShuttingDown = errors.New("the node is shutting down")

// startIssuePool starts size goroutines, counted in wg, that serve jobs
// until ctx ends.
func startIssuePool(ctx context.Context, wg *sync.WaitGroup, size int) *issuePool {
	p := &issuePool{jobs: make(chan func()), stop: ctx.Done()}
	for range size {
		wg.Go(func() {
			for {
				select {
				case f := <-p.jobs:
					f()
				case <-ctx.Done():
					return
				}
			}
		})
	}
	return p
}

// do runs f on a pool goroutine and returns once it has run, or without
// running it when ctx ends (or the node stops) before a goroutine is free.
func (p *issuePool) do(ctx context.Context, f func()) error {
	done := make(chan struct{})
	select {
	case p.jobs <- func() { defer close(done); f() }:
	case <-ctx.Done():
		return ctx.Err()
	case <-p.stop:
		return errShuttingDown
	}
	<-done
	return nil
}

// issue issues a gateway's certificate on the node's issuance pool.
func (n *Node) issue(ctx context.Context, csr *x509.CertificateRequest, p ca.Profile) (chain []*x509.Certificate, err error) {
	if perr := n.issues.do(ctx, func() { chain, err = n.ca.Issue(ctx, csr, p) }); perr != nil {
		return nil, perr
	}
	return chain, err
}
