package controller

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/govnet/govnet/api"
)

// CommandType names a replicated command. The list is append-only: a
// value, once released, keeps its meaning forever; a new one has the
// level of its release (controller/level.go).
type CommandType uint8

// IgnoreUnknownTypeFlag marks a command that a node which does not know
// its type may skip instead of halting: set it on commands whose loss
// cannot corrupt state (reports, for example). A node that skips one
// still appends an audit entry for it, named by its number
// ("command(N)"), where a node that knows it names it: their audit
// chains part from that entry on. So a new type, ignorable or not, is
// written only once no node of an older release can see it: give it the
// level of the release that adds it (CommandType.level,
// controller/level.go). TestIgnorableTypes lists the ignorable ones
// released.
const IgnoreUnknownTypeFlag CommandType = 128

const (
	CmdInitNetwork     CommandType = 1
	CmdAgencyUpsert    CommandType = 2
	CmdGatewayAdd      CommandType = 3
	CmdTokenIssue      CommandType = 4
	CmdGatewayEnroll   CommandType = 5
	CmdPolicyPublish   CommandType = 6
	CmdGatewayReport   CommandType = 7 | IgnoreUnknownTypeFlag
	CmdMemberUpsert    CommandType = 8
	CmdMemberRemove    CommandType = 9
	CmdPersonUpsert    CommandType = 10
	CmdRequestCreate   CommandType = 11
	CmdRequestDecide   CommandType = 12
	CmdStateRestored   CommandType = 13
	CmdCertRecord      CommandType = 14
	CmdCertRevoke      CommandType = 15
	CmdGatewayRenew    CommandType = 16
	CmdCRLPublish      CommandType = 17
	CmdIssuerUpsert    CommandType = 18
	CmdAuditCheckpoint CommandType = 25
	CmdGatewayReports  CommandType = 24 | IgnoreUnknownTypeFlag
	CmdGatewayRenews   CommandType = 26
	// Reports that change nothing but their time (controller/refresh.go).
	CmdGatewayRefreshes CommandType = 27 | IgnoreUnknownTypeFlag
	// A call on every gateway to renew now (controller/renewcall.go).
	CmdRenewCall CommandType = 28
	// Expired certificates moved to the archive (controller/certarchive.go).
	CmdCertArchive CommandType = 29
	// People's credentials after init: an invitation's token, the
	// certificate enrolled with it, a renewal (controller/personcert.go).
	CmdPersonInvite CommandType = 30
	CmdPersonEnroll CommandType = 31
	CmdPersonRenew  CommandType = 32
	// A gateway registered with its LANs checked by the state machine
	// against every gateway in service (State.lanProblems), so that two
	// registrations committed at the same instant cannot both claim a
	// network. Same body as CmdGatewayAdd, which still applies as it
	// always did to the logs of earlier releases.
	CmdGatewayRegister CommandType = 33
	// The bodies of CmdGatewayReports and CmdGatewayRefreshes packed in
	// binary (controller/reportcodec.go) instead of JSON: what nodes
	// write since this release. The JSON types still apply as they did.
	CmdGatewayReportsPacked   CommandType = 34 | IgnoreUnknownTypeFlag
	CmdGatewayRefreshesPacked CommandType = 35 | IgnoreUnknownTypeFlag
	// A backup of this cluster restored (controller/restore.go): a
	// command like any other, committed by a quorum before any node
	// applies it. Its body is binary (BackupRestoreRequest.encode).
	CmdBackupRestore CommandType = 36
	// The cluster's level raised (controller/level.go).
	CmdClusterLevel CommandType = 37
	// A backup of this cluster restored, as CmdBackupRestore, carrying
	// only what the restore takes from the backup (controller/rollback.go):
	// what nodes write since this release. CmdBackupRestore still
	// applies as it did.
	CmdBackupRollBack CommandType = 38
	// Agency registry operations (controller/agency.go).
	CmdAgencyImport        CommandType = 19
	CmdAgencyMerge         CommandType = 20
	CmdAgencyReparent      CommandType = 21
	CmdAgencyClose         CommandType = 22
	CmdGatewayDecommission CommandType = 23
)

// packed says whether t's body is a packed report batch, not JSON.
func (t CommandType) packed() bool {
	return t == CmdGatewayReportsPacked || t == CmdGatewayRefreshesPacked
}

func (t CommandType) String() string {
	switch t {
	case CmdInitNetwork:
		return "init-network"
	case CmdAgencyUpsert:
		return "agency-upsert"
	case CmdGatewayAdd:
		return "gateway-add"
	case CmdTokenIssue:
		return "token-issue"
	case CmdGatewayEnroll:
		return "gateway-enroll"
	case CmdPolicyPublish:
		return "policy-publish"
	case CmdGatewayReport:
		return "gateway-report"
	case CmdMemberUpsert:
		return "member-upsert"
	case CmdMemberRemove:
		return "member-remove"
	case CmdPersonUpsert:
		return "person-upsert"
	case CmdRequestCreate:
		return "request-create"
	case CmdRequestDecide:
		return "request-decide"
	case CmdStateRestored:
		return "state-restored"
	case CmdCertRecord:
		return "cert-record"
	case CmdCertRevoke:
		return "cert-revoke"
	case CmdGatewayRenew:
		return "gateway-renew"
	case CmdCRLPublish:
		return "crl-publish"
	case CmdIssuerUpsert:
		return "issuer-upsert"
	case CmdAuditCheckpoint:
		return "audit-checkpoint"
	case CmdGatewayReports:
		return "gateway-reports"
	case CmdGatewayRenews:
		return "gateway-renews"
	case CmdGatewayRefreshes:
		return "gateway-refreshes"
	case CmdRenewCall:
		return "renew-call"
	case CmdCertArchive:
		return "cert-archive"
	case CmdPersonInvite:
		return "person-invite"
	case CmdPersonEnroll:
		return "person-enroll"
	case CmdPersonRenew:
		return "person-renew"
	case CmdGatewayRegister:
		return "gateway-register"
	case CmdGatewayReportsPacked:
		return "gateway-reports-packed"
	case CmdGatewayRefreshesPacked:
		return "gateway-refreshes-packed"
	case CmdBackupRestore:
		return "backup-restore"
	case CmdClusterLevel:
		return "cluster-level"
	case CmdBackupRollBack:
		return "backup-rollback"
	case CmdAgencyImport:
		return "agency-import"
	case CmdAgencyMerge:
		return "agency-merge"
	case CmdAgencyReparent:
		return "agency-reparent"
	case CmdAgencyClose:
		return "agency-close"
	case CmdGatewayDecommission:
		return "gateway-decommission"
	}
	return fmt.Sprintf("command(%d)", uint8(t))
}

// known says whether this version of the state machine applies t.
func (t CommandType) known() bool { return !strings.HasPrefix(t.String(), "command(") }

// Meta is stamped by the node that submits a command: who asked, and the
// leader's clock, so that Apply never reads a clock of its own.
type Meta struct {
	Actor string    `json:"actor"`
	At    time.Time `json:"at"`
}

// AuditCheckpointRequest records a checkpoint of the audit chain's head
// that the leader signed with its node key. Apply checks that it names an
// entry of the chain with that entry's hash and moves forward.
type AuditCheckpointRequest struct {
	Meta
	Node       string              `json:"node"`
	Checkpoint api.AuditCheckpoint `json:"checkpoint"`
}

// InitNetworkRequest sets the overlay address plan, once, and the
// cluster's first level: the initialising leader's release level (none,
// in the logs of releases before levels: level 1).
type InitNetworkRequest struct {
	Meta
	OverlayPrefix netip.Prefix `json:"overlay_prefix"`
	Level         int          `json:"level,omitempty"`
}

// AgencyUpsertRequest registers or renames an agency. Parent, when set,
// places a new agency under a registered agency other than its code's
// parent (whose code may have been closed by a merger).
type AgencyUpsertRequest struct {
	Meta
	Code   string `json:"code"`
	Name   string `json:"name"`
	Parent string `json:"parent,omitempty"`
}

// GatewayAddRequest registers a gateway, pending enrollment
// (CmdGatewayRegister; CmdGatewayAdd in earlier releases).
type GatewayAddRequest struct {
	Meta
	ID       string         `json:"id"`
	Agency   string         `json:"agency"`
	Name     string         `json:"name"`
	Endpoint string         `json:"endpoint"`
	LANs     []netip.Prefix `json:"lans"`
}

// TokenIssueRequest records a one-time enrollment token by its hash.
type TokenIssueRequest struct {
	Meta
	Gateway   string    `json:"gateway"`
	TokenHash string    `json:"token_hash"`
	Expires   time.Time `json:"expires"`
	// Reenroll: a token for an enrolled gateway, which replaces its
	// certificate and WireGuard key and keeps its overlay address (one
	// whose certificate expired while it was off, a replaced machine).
	Reenroll bool `json:"reenroll,omitempty"`
}

// GatewayEnrollRequest burns a token and binds the gateway's keys.
type GatewayEnrollRequest struct {
	Meta
	Gateway     string    `json:"gateway"`
	TokenHash   string    `json:"token_hash"`
	PublicKey   string    `json:"public_key"`
	Endpoint    string    `json:"endpoint"`
	CertSerial  string    `json:"cert_serial"`
	CertExpires time.Time `json:"cert_expires"`
	// Cert is the inventory record of the certificate just signed: one
	// raft entry enrolls and records. Absent in entries written before
	// the inventory existed.
	Cert *api.Certificate `json:"cert,omitempty"`
}

// PolicyPublishRequest makes a validated policy the current one.
type PolicyPublishRequest struct {
	Meta
	Name   string `json:"name"`
	Source string `json:"source"`
}

// GatewayReportRequest records what a gateway says it applied.
type GatewayReportRequest struct {
	Meta
	Gateway string     `json:"gateway"`
	Report  api.Report `json:"report"`
}

// GatewayReportsRequest is many gateways' reports in one entry: a node
// groups the reports that arrive while one is being committed, so that a
// policy change's reports from every gateway take a few raft entries.
type GatewayReportsRequest struct {
	Meta
	Reports []GatewayReportRequest `json:"reports"`
}

// MemberUpsertRequest records a controller node's addresses. Raft's own
// configuration says who votes; this record tells the other nodes and the
// clients where the node's API is, so that writes can be forwarded to the
// leader.
type MemberUpsertRequest struct {
	Meta
	Node     string `json:"node"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
	// Level is the release level the node runs (0: not known, as when an
	// operator adds it). Report marks the node's own report of it, which
	// from cluster level 2 on changes only the level of its record, and
	// only while the record has these addresses: a report that crosses
	// the node's removal brings no record back. At level 1 it is an
	// upsert, as a node of a release before levels, which ignores both
	// fields, applies it.
	Level  int  `json:"level,omitempty"`
	Report bool `json:"report,omitempty"`
}

// MemberRemoveRequest forgets a controller node's record.
type MemberRemoveRequest struct {
	Meta
	Node string `json:"node"`
}

// PersonUpsertRequest registers a person's certificate and role, or
// changes its status (revoking it).
type PersonUpsertRequest struct {
	Meta
	Name   string `json:"name"`
	Role   string `json:"role"`
	Serial string `json:"serial"`
	Status string `json:"status"` // active or revoked
}

// RequestCreateRequest opens a four-eyes request: an officer other than
// the requester must approve it before it takes effect.
type RequestCreateRequest struct {
	Meta
	ID           string        `json:"id"` // chosen by the submitting node
	Role         string        `json:"role"`
	Kind         string        `json:"kind"` // api.RequestToken, RequestPolicy, RequestRevoke
	Gateway      string        `json:"gateway,omitempty"`
	TTL          time.Duration `json:"ttl,omitempty"`
	PolicyName   string        `json:"policy_name,omitempty"`
	PolicySource string        `json:"policy_source,omitempty"`
	Reason       string        `json:"reason,omitempty"`
	// Revocation requests: a serial instead of a gateway, and the RFC
	// 5280 reason code.
	Serial     string `json:"serial,omitempty"`
	ReasonCode int    `json:"reason_code,omitempty"`
	// Restore requests: the backup's SHA-256, lowercase hex.
	BackupSHA256 string `json:"backup_sha256,omitempty"`
	// Person requests: who and which role (Serial: the certificate).
	PersonName string `json:"person_name,omitempty"`
	PersonRole string `json:"person_role,omitempty"`
	// Invite requests: the invitee's key (SHA-256 of its SPKI, hex).
	KeySHA256 string `json:"key_sha256,omitempty"`
	// Token requests: a re-enrollment of an enrolled gateway.
	Reenroll bool `json:"reenroll,omitempty"`
}

// RequestDecideRequest approves or rejects a pending request. Approving a
// token request carries the token's hash, made by the submitting node.
type RequestDecideRequest struct {
	Meta
	ID        string `json:"id"`
	Role      string `json:"role"`
	Approve   bool   `json:"approve"`
	TokenHash string `json:"token_hash,omitempty"`
}

// StateRestoredRequest followed a restore from a backup in earlier
// releases: it recorded who restored which backup in the audit chain, a
// commit after the restore itself. The restore's entry is now part of the
// restored state (controller/restore.go); the command still applies, as
// nothing, to the logs of those releases.
type StateRestoredRequest struct {
	Meta
	BackupSHA256 string `json:"backup_sha256"`
	BackupIndex  uint64 `json:"backup_index"`
	// RequestID is the approved restore request it was done under, in
	// four-eyes mode.
	RequestID string `json:"request_id,omitempty"`
}

// CertRecordRequest adds issued certificates to the inventory. The
// recorder batches certificates signed close together into one command,
// so that the raft commit, not one fsync per certificate, bounds the rate.
type CertRecordRequest struct {
	Meta
	Certs []api.Certificate `json:"certs"`
}

// CertArchiveRequest moves certificates that expired before Before from
// the inventory to the archive (see applyCertArchive for which qualify).
type CertArchiveRequest struct {
	Meta
	Before  time.Time `json:"before"`
	Serials []string  `json:"serials"`
}

// CertRevokeRequest revokes a certificate by serial, or a gateway and
// every valid certificate of it. Revoking a gateway's current certificate
// revokes the gateway; revoking a person's registered certificate revokes
// the person.
type CertRevokeRequest struct {
	Meta
	Serial  string `json:"serial,omitempty"`
	Gateway string `json:"gateway,omitempty"`
	Reason  int    `json:"reason"` // RFC 5280 CRLReason
}

// GatewayRenewRequest records a renewed gateway certificate and makes it
// the gateway's current one; OldSerial must be the current one.
type GatewayRenewRequest struct {
	Meta
	Gateway   string          `json:"gateway"`
	OldSerial string          `json:"old_serial"`
	Cert      api.Certificate `json:"cert"`
	// From is a certificate the gateway may hold other than OldSerial:
	// the one before, presented to retry a renewal whose answer was
	// lost, or the one its stream was opened with, renewed on since.
	// Gateway.RenewedFrom becomes OldSerial and From.
	From string `json:"from,omitempty"`
}

// GatewayRenewsRequest is many gateways' renewals in one entry, all or
// none: a node groups the renewals that arrive while one is being
// committed, so that a wave of renewals (the whole network re-issued)
// costs a few raft entries instead of one each.
type GatewayRenewsRequest struct {
	Meta
	Renewals []GatewayRenewRequest `json:"renewals"`
}

// CRLPublishRequest stores a CRL signed by the node that holds the
// issuer's key, so that every node serves every issuer's CRL. Number
// must be the issuer's last number plus one; Covers is the raft index of
// the last revocation it includes.
type CRLPublishRequest struct {
	Meta
	Issuer     string    `json:"issuer"`
	Number     uint64    `json:"number"`
	Covers     uint64    `json:"covers"`
	ThisUpdate time.Time `json:"this_update"`
	NextUpdate time.Time `json:"next_update"`
	DER        []byte    `json:"der"`
	// Revoked lists the CRL's entries when the inventory does not know
	// of them yet: a root CRL revoking intermediates.
	Revoked []CRLEntry `json:"revoked,omitempty"`
}

// CRLEntry is one revoked certificate of a CRL.
type CRLEntry struct {
	Serial string    `json:"serial"`
	Reason int       `json:"reason"`
	At     time.Time `json:"at"`
}

// IssuerUpsertRequest records which node holds an intermediate and where
// its plain-HTTP revocation endpoint is, so that any node can route an
// OCSP request to the only node that can sign its answer.
type IssuerUpsertRequest struct {
	Meta
	Issuer   string `json:"issuer"`
	Node     string `json:"node"`
	HTTPAddr string `json:"http_addr"`
}

// AgencyImportRequest registers many agencies at once, all or nothing:
// a parent may come earlier in the same request.
type AgencyImportRequest struct {
	Meta
	Agencies []api.AgencyRow `json:"agencies"`
}

// AgencyMergeRequest merges Sources into Into: their child agencies and
// gateways move to Into, and their codes are closed.
type AgencyMergeRequest struct {
	Meta
	Sources []string `json:"sources"`
	Code    string   `json:"code"` // the survivor (Code, so that the audit entry names it)
}

// AgencyReparentRequest moves one agency under another parent.
type AgencyReparentRequest struct {
	Meta
	Code   string `json:"code"`
	Parent string `json:"parent"`
}

// AgencyCloseRequest closes an agency that has no gateways or active
// children left.
type AgencyCloseRequest struct {
	Meta
	Code string `json:"code"`
}

// GatewayDecommissionRequest takes a gateway out of service: its valid
// certificates are revoked (cessationOfOperation) and it stays listed as
// decommissioned.
type GatewayDecommissionRequest struct {
	Meta
	Gateway string `json:"gateway"`
	Reason  string `json:"reason,omitempty"`
}

// encodeCommand frames a command as its type byte followed by JSON, or
// by the packed form for the packed types.
func encodeCommand(t CommandType, req any) ([]byte, error) {
	if t == CmdBackupRestore || t == CmdBackupRollBack {
		r, ok := req.(*BackupRestoreRequest)
		if !ok {
			return nil, fmt.Errorf("encode %s: a %T, want *BackupRestoreRequest", t, req)
		}
		return r.encode(t)
	}
	if t.packed() {
		r, ok := req.(*GatewayReportsRequest)
		if !ok {
			return nil, fmt.Errorf("encode %s: a %T, want *GatewayReportsRequest", t, req)
		}
		return append([]byte{byte(t)}, encodeReportsPacked(r)...), nil
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", t, err)
	}
	return append([]byte{byte(t)}, body...), nil
}

// PersonInviteRequest records a one-time token (its hash) with which the
// person Name enrolls for a certificate of Role.
type PersonInviteRequest struct {
	Meta
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	TokenHash string    `json:"token_hash"`
	Expires   time.Time `json:"expires"`
	// KeySHA256, if set, is the only key that may enroll with it.
	KeySHA256 string `json:"key_sha256,omitempty"`
}

// PersonEnrollRequest registers the certificate a person enrolled for
// with an invitation's token.
type PersonEnrollRequest struct {
	Meta
	Name      string          `json:"name"`
	TokenHash string          `json:"token_hash"`
	Cert      api.Certificate `json:"cert"`
}

// PersonRenewRequest registers the certificate a person renewed with the
// certificate From.
type PersonRenewRequest struct {
	Meta
	Name string          `json:"name"`
	From string          `json:"from"`
	Cert api.Certificate `json:"cert"`
}
