package controller

import (
	"crypto/x509"
	"fmt"
	"net/http"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// kindIntermediate is the inventory kind of a controller node's
// intermediate: the root (M custodians) issued it, the root's CRL revokes it.
const kindIntermediate = "intermediate"

// maxRootCRL bounds an uploaded root CRL: it lists revoked intermediates,
// a handful per controller node ever made.
const maxRootCRL = 1 << 20

// handleRootCRLPublish takes a root CRL that the custodians signed with M
// shares (`govnetd ceremony crl`) and replicates it, so that every node
// serves it at /crl/<root id>.crl, the distribution point the
// intermediates name. It must be signed by the network's root and newer
// than the one in force.
func (n *Node) handleRootCRLPublish(w http.ResponseWriter, r *http.Request, id ca.Identity) {
	var req api.RootCRLPublish
	if !decode(w, r, &req) {
		return
	}
	root := n.ca.Root()
	crl, err := x509.ParseRevocationList(req.DER)
	if err != nil {
		writeError(w, http.StatusBadRequest, "root CRL: "+err.Error())
		return
	}
	if err := crl.CheckSignatureFrom(root); err != nil {
		writeError(w, http.StatusBadRequest, "root CRL: not signed by this network's root: "+err.Error())
		return
	}
	if crl.Number == nil || crl.Number.Sign() <= 0 || !crl.Number.IsUint64() {
		writeError(w, http.StatusBadRequest, "root CRL: it needs a CRL number")
		return
	}
	issuer := ca.IssuerID(root)
	var revoked []CRLEntry
	for _, e := range crl.RevokedCertificateEntries {
		revoked = append(revoked, CRLEntry{Serial: e.SerialNumber.Text(16), Reason: e.ReasonCode, At: e.RevocationTime.UTC()})
	}
	index, err := n.submit(r.Context(), CmdCRLPublish, &CRLPublishRequest{Meta: n.meta(id.Name), Issuer: issuer,
		Number: crl.Number.Uint64(), Covers: uint64(len(crl.RevokedCertificateEntries)),
		ThisUpdate: crl.ThisUpdate.UTC(), NextUpdate: crl.NextUpdate.UTC(), DER: req.DER, Revoked: revoked})
	if err != nil {
		n.fail(w, err)
		return
	}
	n.log.Info("root CRL published", "number", crl.Number, "revoked", len(crl.RevokedCertificateEntries), "raft_index", index)
	writeJSON(w, http.StatusOK, api.RootCRLPublished{Issuer: issuer, Number: crl.Number.Uint64(), Revoked: len(crl.RevokedCertificateEntries),
		NextUpdate: crl.NextUpdate.UTC(), RaftIndex: index, Path: fmt.Sprintf("/crl/%s.crl", issuer)})
}
