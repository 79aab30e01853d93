package controller

import (
	"context"
	"crypto/x509"
	"errors"

	"github.com/govnet/govnet/ca"
	"github.com/govnet/govnet/internal/workpool"
)

// Gateways' certificate issuances (enrollments and renewals) run on the
// node's issuance pool (Node.issues, 2 × GOMAXPROCS goroutines). At most
// that many sign at once: a network renewing on an officer's call queues
// there instead of thousands of issuances sharing the cores with raft.
// And the deep stack an issuance needs is grown once per pool goroutine
// instead of on each of the thousands of stream goroutines that ask for
// one: growing and copying those stacks was 5.5% of the nodes' CPU in a
// re-issue of 20,000 gateways. People's and the nodes' own certificates,
// few and asked for by someone waiting, do not queue behind such a wave:
// they are issued where they are asked for.

// errShuttingDown is what an issuance asked for while the node stops gets.
var errShuttingDown = errors.New("the node is shutting down")

// onIssuePool runs f on the node's issuance pool (workpool.Pool.Do).
func (n *Node) onIssuePool(ctx context.Context, f func()) error {
	err := n.issues.Do(ctx, f)
	if errors.Is(err, workpool.ErrStopped) {
		return errShuttingDown
	}
	return err
}

// issue issues a gateway's certificate on the node's issuance pool.
func (n *Node) issue(ctx context.Context, csr *x509.CertificateRequest, p ca.Profile) (chain []*x509.Certificate, err error) {
	if perr := n.onIssuePool(ctx, func() { chain, err = n.ca.Issue(ctx, csr, p) }); perr != nil {
		return nil, perr
	}
	return chain, err
}
