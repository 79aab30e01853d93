// Package api holds the wire types shared by govnetd, govnet-agent and
// govnetctl: requests and responses of the controller's HTTP API and the
// per-gateway view that the watch stream delivers.
package api

import (
	"encoding/json"
	"net/netip"
	"time"
)

// Gateway statuses.
const (
	StatusPending        = "pending"
	StatusEnrolled       = "enrolled"
	StatusRevoked        = "revoked"
	StatusDecommissioned = "decommissioned"
)

// Protocols a rule can name.
const (
	ProtoTCP  = "tcp"
	ProtoUDP  = "udp"
	ProtoICMP = "icmp"
)

// Agency statuses. A closed code stays in the registry, for history, and
// is never registered again.
const (
	AgencyActive = "active"
	AgencyClosed = "closed"
)

// Agency is one agency of the state, identified by its QCVN 102:2016 code.
type Agency struct {
	Code string `json:"code"`
	Name string `json:"name"`
	// Parent is stored: it starts as the code's parent (empty for level 1)
	// and mergers and re-parenting change it.
	Parent string `json:"parent,omitempty"`
	Level  string `json:"level"` // central, province, district, commune, unit
	// Status is active or closed (records written before statuses
	// existed have none: they are active).
	Status     string    `json:"status,omitempty"`
	ClosedAt   time.Time `json:"closed_at,omitzero"`
	MergedInto string    `json:"merged_into,omitempty"` // the survivor of the merger that closed it
}

// Closed reports whether the agency's code was closed.
func (a *Agency) Closed() bool { return a.Status == AgencyClosed }

// Gateway is one agency edge gateway.
type Gateway struct {
	ID          string         `json:"id"`
	Agency      string         `json:"agency"`
	Name        string         `json:"name,omitempty"`
	Endpoint    string         `json:"endpoint,omitempty"` // host:port on the transport network
	LANs        []netip.Prefix `json:"lans,omitempty"`     // agency LAN prefixes it routes
	Status      string         `json:"status"`
	PublicKey   string         `json:"public_key,omitempty"` // WireGuard, base64
	OverlayIP   netip.Addr     `json:"overlay_ip,omitzero"`
	CertSerial  string         `json:"cert_serial,omitempty"`
	CertExpires time.Time      `json:"cert_expires,omitzero"`
	// RenewedFrom are the certificates (at most two) the gateway may
	// still hold when it renewed its current one: a renewal whose answer
	// was lost can be made again with one of them, for the same key (see
	// POST /v1/renew).
	RenewedFrom Serials `json:"renewed_from,omitempty"`
	Report      *Report `json:"report,omitempty"`
	// ExpectedDigest is the digest of the ruleset the gateway's current
	// view compiles to; Ruleset compares the report with it: "ok",
	// "mismatch" (the gateway's table is not what it was sent), "failed"
	// (the gateway could not apply the current view: Report.ApplyError),
	// or "pending" (no report yet for the current view).
	ExpectedDigest string `json:"expected_digest,omitempty"`
	Ruleset        string `json:"ruleset,omitempty"`
}

// Serials is a list of certificate serials. It also reads a single
// serial as a string, the form Gateway.renewed_from had in the builds of
// 23 November that introduced it (their snapshots must restore).
type Serials []string

// UnmarshalJSON reads a list of serials, or one serial.
func (s *Serials) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = nil
		if one != "" {
			*s = Serials{one}
		}
		return nil
	}
	return json.Unmarshal(b, (*[]string)(s))
}

// Ruleset attestation states of a gateway (Gateway.Ruleset).
const (
	RulesetOK       = "ok"
	RulesetMismatch = "mismatch"
	RulesetPending  = "pending"
	RulesetFailed   = "failed"
)

// Report is what an agent says it applied.
type Report struct {
	PolicyVersion uint64    `json:"policy_version"`
	RaftIndex     uint64    `json:"raft_index"`
	RulesetDigest string    `json:"ruleset_digest"`
	Peers         int       `json:"peers"`
	LastHandshake time.Time `json:"last_handshake,omitzero"` // most recent WireGuard handshake of any peer
	At            time.Time `json:"at,omitzero"`             // stamped by the controller
	// FailedIndex and ApplyError name the newest view the agent received
	// and could not apply (its raft index), and why; the fields above
	// still describe the view it enforces. Empty once a view applies.
	FailedIndex uint64 `json:"failed_index,omitempty"`
	ApplyError  string `json:"apply_error,omitempty"`
	// PeersLeftOut is how many peers of the view the agent enforces
	// (RaftIndex) its WireGuard device does not hold in full: left out (a
	// bad key or endpoint, the gateway's own key, a duplicate) or held
	// without some of their allowed IPs or routes (an allowed IP another
	// peer claims). The gateway does not reach them, or not all of their
	// LANs. PeerError says why, one line per problem, each naming the
	// peer. Zero once a view applies with every peer.
	PeersLeftOut int    `json:"peers_left_out,omitempty"`
	PeerError    string `json:"peer_error,omitempty"`
}

// SameState says whether r and o report the same state of the gateway,
// whatever their times (At, LastHandshake): o refreshes r.
func (r Report) SameState(o Report) bool {
	return r.PolicyVersion == o.PolicyVersion && r.RaftIndex == o.RaftIndex && r.RulesetDigest == o.RulesetDigest &&
		r.Peers == o.Peers && r.FailedIndex == o.FailedIndex && r.ApplyError == o.ApplyError &&
		r.PeersLeftOut == o.PeersLeftOut && r.PeerError == o.PeerError
}

// View is everything one gateway needs to configure itself: its peers and
// the inbound flows it must accept. Everything else is dropped.
type View struct {
	Gateway       string       `json:"gateway"`
	RaftIndex     uint64       `json:"raft_index"`
	PolicyVersion uint64       `json:"policy_version"`
	OverlayIP     netip.Addr   `json:"overlay_ip"`
	OverlayPrefix netip.Prefix `json:"overlay_prefix"`
	Peers         []Peer       `json:"peers"`
	Rules         []Rule       `json:"rules"`
	// LANs are the gateway's own LAN prefixes, the only destinations its
	// firewall forwards traffic from the overlay to. Absent (nil) in
	// views of controllers of earlier releases: the agent then checks no
	// destination; empty: the gateway forwards nothing.
	LANs []netip.Prefix `json:"lans"`
}

// Peer is a WireGuard peer of a gateway.
type Peer struct {
	Gateway    string         `json:"gateway"`
	Agency     string         `json:"agency"`
	PublicKey  string         `json:"public_key"` // base64
	Endpoint   string         `json:"endpoint,omitempty"`
	AllowedIPs []netip.Prefix `json:"allowed_ips"` // overlay /32 first, then LAN prefixes
}

// Rule admits packets from Source with Protocol to Port (0 for ICMP).
type Rule struct {
	Source   netip.Prefix `json:"source"`
	Protocol string       `json:"protocol"`
	Port     uint16       `json:"port,omitempty"`
}

// EnrollRequest is sent once by an agent with its one-time token.
type EnrollRequest struct {
	Token     string `json:"token"`
	CSR       string `json:"csr"`        // PEM
	PublicKey string `json:"public_key"` // WireGuard, base64
	Endpoint  string `json:"endpoint,omitempty"`
}

// EnrollResponse carries the gateway's identity on the overlay.
type EnrollResponse struct {
	Gateway       string       `json:"gateway"`
	Agency        string       `json:"agency"`
	Certificate   string       `json:"certificate"` // PEM chain: leaf, intermediate
	Root          string       `json:"root"`        // PEM
	OverlayIP     netip.Addr   `json:"overlay_ip"`
	OverlayPrefix netip.Prefix `json:"overlay_prefix"`
}

// TokenResponse returns a one-time enrollment token.
type TokenResponse struct {
	Gateway string `json:"gateway,omitempty"`
	// Person and Role: a token with which a person enrolls (an invitation).
	Person  string    `json:"person,omitempty"`
	Role    string    `json:"role,omitempty"`
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
}

// InviteRequest asks for a one-time token with which a person enrolls
// for a certificate of Role (an invitation).
type InviteRequest struct {
	Role string `json:"role"`
	TTL  string `json:"ttl,omitempty"` // Go duration; default 1h
	// KeySHA256, if set, binds the invitation to the invitee's key: the
	// SHA-256 of its SubjectPublicKeyInfo (DER), hex (govnetctl person
	// key prints it). Invite requests (four-eyes) must set it.
	KeySHA256 string `json:"key_sha256,omitempty"`
}

// PersonEnrollRequest is a person's first certificate request, with the
// token an officer gave them. The name and role in the certificate come
// from the invitation, never from the CSR.
type PersonEnrollRequest struct {
	Name  string `json:"name"`
	Token string `json:"token"`
	CSR   string `json:"csr"` // PEM
}

// PersonRenewRequest renews the caller's own certificate.
type PersonRenewRequest struct {
	CSR string `json:"csr"` // PEM, for a new key
}

// PersonCertResponse is a person's new certificate.
type PersonCertResponse struct {
	Name        string    `json:"name"`
	Role        string    `json:"role"`
	Serial      string    `json:"serial"`
	Expires     time.Time `json:"expires"`
	Certificate string    `json:"certificate"` // PEM chain: leaf, intermediate
	Root        string    `json:"root"`        // PEM
}

// TokenRequest asks for an enrollment token for a gateway.
type TokenRequest struct {
	TTL string `json:"ttl,omitempty"` // Go duration; default 1h
	// Reenroll asks for a token for an enrolled gateway: enrolling with
	// it replaces the gateway's certificate and WireGuard key and keeps
	// its name and overlay address.
	Reenroll bool `json:"reenroll,omitempty"`
}

// Policy is a published policy document.
type Policy struct {
	Version   uint64    `json:"version"`
	Source    string    `json:"source"`
	Published time.Time `json:"published,omitzero"`
	Actor     string    `json:"actor,omitempty"`
}

// PolicyRequest loads a new policy.
type PolicyRequest struct {
	Name   string `json:"name,omitempty"` // file name, for error messages
	Source string `json:"source"`
}

// ConsistencyHeader, set to Linearizable on a read, makes the answering
// controller catch up with every write the cluster had committed when the
// request arrived before it answers. Without it a follower answers from
// its own state, which may lag the leader by a few milliseconds.
const (
	ConsistencyHeader = "X-Govnet-Consistency"
	Linearizable      = "linearizable"
)

// Error is the body of every non-2xx response.
type Error struct {
	Error string `json:"error"`
}

// ClusterStatus is one controller node's view of the cluster.
type ClusterStatus struct {
	Node      string   `json:"node"`
	State     string   `json:"state"`  // raft state: Leader, Follower, Candidate
	Leader    string   `json:"leader"` // leader's node name, empty if none is known
	RaftIndex uint64   `json:"raft_index"`
	Ready     bool     `json:"ready"`
	NotReady  string   `json:"not_ready,omitempty"` // why not
	Watchers  int      `json:"watchers"`            // gateway streams served by this node
	Members   []Member `json:"members,omitempty"`   // the cluster as this node sees it
	// Level is the cluster's level; ReleaseLevel the answering node's
	// release's (installer.md, "Upgrades and removal").
	Level        int `json:"level,omitempty"`
	ReleaseLevel int `json:"release_level,omitempty"`
}

// Member is one controller node of the cluster.
type Member struct {
	Node     string `json:"node"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr,omitempty"`
	Suffrage string `json:"suffrage,omitempty"` // voter, nonvoter; empty if not in raft's configuration
	Leader   bool   `json:"leader,omitempty"`
	// Level is the release level the node reported (0: none yet).
	Level int `json:"level,omitempty"`
}

// JoinRequest asks the cluster to add a controller node as a voter.
type JoinRequest struct {
	Node     string `json:"node"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
	// Level is the joining node's release level, when the node asks
	// itself; a node below the cluster's level is refused.
	Level int `json:"level,omitempty"`
}

// Person statuses.
const (
	PersonActive  = "active"
	PersonRevoked = "revoked"
)

// Person is someone allowed to use the API, bound to one certificate.
type Person struct {
	Name   string `json:"name"`
	Role   string `json:"role"`
	Serial string `json:"serial"` // certificate serial, hex
	Status string `json:"status"`
	// RevokedSerials are the serials of every certificate of this person
	// that was revoked: none of them is registered again.
	RevokedSerials []string `json:"revoked_serials,omitempty"`
	// Previous is the certificate Serial was renewed from: it may still
	// renew (a renewal whose answer was lost), and do nothing else.
	Previous string `json:"previous,omitempty"`
	// FormerRoles are the roles the person held before Role, each once,
	// in the order they were left: an auditor counts the approvals an
	// officer made before they took another role (govnetctl cert audit).
	// Empty in records made before it was kept.
	FormerRoles []string `json:"former_roles,omitempty"`
}

// Kinds of four-eyes request.
const (
	RequestToken  = "token"  // issue an enrollment token for a pending gateway
	RequestPolicy = "policy" // publish a policy
	RequestRevoke = "revoke" // revoke an enrolled gateway
	// RequestRestore approves restoring one backup, named by its SHA-256:
	// in four-eyes mode `cluster snapshot restore` needs one, approved by
	// another officer within RestoreApprovalTTL.
	RequestRestore = "restore"
	// RequestPerson registers a person's certificate (name, role,
	// serial): in four-eyes mode one officer may not add an officer.
	RequestPerson = "person"
	// RequestInvite issues a one-time token with which a person enrolls
	// for a certificate (name, role): in four-eyes mode one officer may
	// not invite an officer.
	RequestInvite = "invite"
)

// RestoreApprovalTTL is how long an approved restore request lets its
// backup be restored.
const RestoreApprovalTTL = time.Hour

// RestoreTimeout bounds a restore, from the call to every node holding
// the restored state: the leader merges the backup into a copy of the
// state and raft installs the result on every node, seconds to minutes
// for a large network.
const RestoreTimeout = 10 * time.Minute

// Request statuses.
const (
	RequestPending  = "pending"
	RequestApproved = "approved"
	RequestRejected = "rejected"
)

// Request is a change that one person asks for and an officer who is
// someone else approves.
type Request struct {
	ID           string `json:"id"`
	Kind         string `json:"kind"`
	Gateway      string `json:"gateway,omitempty"`
	TTL          string `json:"ttl,omitempty"`
	PolicyName   string `json:"policy_name,omitempty"`
	PolicySource string `json:"policy_source,omitempty"`
	Reason       string `json:"reason,omitempty"`
	// Revocation requests: the certificate to revoke (instead of a
	// gateway) and the RFC 5280 reason (ca.ParseReason names).
	Serial           string    `json:"serial,omitempty"`
	RevocationReason string    `json:"revocation_reason,omitempty"`
	Requester        string    `json:"requester"`
	Created          time.Time `json:"created"`
	Status           string    `json:"status"`
	Approver         string    `json:"approver,omitempty"`
	Decided          time.Time `json:"decided,omitzero"`
	// Token is the enrollment token, returned once, to the approver.
	Token *TokenResponse `json:"token,omitempty"`
	// Policy is the version an approved policy request published.
	PolicyVersion uint64 `json:"policy_version,omitempty"`
	// BackupSHA256 names the backup a restore request is for (hex).
	BackupSHA256 string `json:"backup_sha256,omitempty"`
	// Restored is the raft index of the restore done under this approved
	// restore request: an approval is good for one restore.
	Restored uint64 `json:"restored,omitempty"`
	// Person requests: who, with which role (Serial is the certificate's).
	PersonName string `json:"person_name,omitempty"`
	PersonRole string `json:"person_role,omitempty"`
	// Invite requests: the invitee's key (SHA-256 of its
	// SubjectPublicKeyInfo, hex), which alone may enroll.
	KeySHA256 string `json:"key_sha256,omitempty"`
	// Token requests: the token re-enrolls an enrolled gateway.
	Reenroll bool `json:"reenroll,omitempty"`
}

// RequestCreate asks for a four-eyes change.
type RequestCreate struct {
	Kind         string `json:"kind"`
	Gateway      string `json:"gateway,omitempty"`
	TTL          string `json:"ttl,omitempty"` // token requests: Go duration, default 1h
	PolicyName   string `json:"policy_name,omitempty"`
	PolicySource string `json:"policy_source,omitempty"`
	Reason       string `json:"reason,omitempty"` // why, in words
	// Revocation requests: a serial instead of a gateway, and the RFC
	// 5280 reason (default unspecified).
	Serial           string `json:"serial,omitempty"`
	RevocationReason string `json:"revocation_reason,omitempty"`
	// Restore requests: the SHA-256 of the backup file, hex.
	BackupSHA256 string `json:"backup_sha256,omitempty"`
	// Person requests: the person's name and role (Serial: the serial of
	// the certificate to register).
	PersonName string `json:"person_name,omitempty"`
	PersonRole string `json:"person_role,omitempty"`
	// Invite requests: the invitee's key, SHA-256 of its
	// SubjectPublicKeyInfo (DER), hex (govnetctl person key prints it).
	KeySHA256 string `json:"key_sha256,omitempty"`
	// Token requests: for an enrolled gateway, to re-enroll it.
	Reenroll bool `json:"reenroll,omitempty"`
}

// Certificate statuses in the inventory.
const (
	CertValid   = "valid"
	CertRevoked = "revoked"
)

// Certificate is one certificate the CA issued, as the replicated
// inventory records it.
type Certificate struct {
	Serial  string   `json:"serial"` // hex, lowercase
	Kind    string   `json:"kind"`   // gateway, person, node or intermediate (the profile)
	Subject string   `json:"subject"`
	Agency  string   `json:"agency,omitempty"`  // gateways
	Gateway string   `json:"gateway,omitempty"` // gateways: the gateway it identifies
	Role    string   `json:"role,omitempty"`    // people
	SANs    []string `json:"sans,omitempty"`
	Issuer  string   `json:"issuer"` // issuer id (ca.IssuerID of the intermediate)
	// KeySHA256 is the SHA-256 of the certified public key
	// (SubjectPublicKeyInfo, DER), hex; absent in records made before it.
	KeySHA256 string    `json:"key_sha256,omitempty"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	Requester string    `json:"requester,omitempty"`
	Approver  string    `json:"approver,omitempty"` // four-eyes: who approved the request behind it
	// RenewedFrom is the certificate a gateway's or a person's renewal
	// replaced (the approval behind it is that one's), or the node
	// certificate before a node's own renewal.
	RenewedFrom string    `json:"renewed_from,omitempty"`
	Issued      time.Time `json:"issued,omitzero"` // when the inventory recorded it (leader's clock)
	// IssuedIndex is the raft index of the command that recorded it; 0
	// in records made before it was kept.
	IssuedIndex uint64    `json:"issued_index,omitempty"`
	Status      string    `json:"status"`
	RevokedAt   time.Time `json:"revoked_at,omitzero"`
	// Reason is the RFC 5280 CRLReason code of a revoked certificate;
	// ReasonName its name.
	Reason     int    `json:"reason,omitempty"`
	ReasonName string `json:"reason_name,omitempty"`
	RevokedBy  string `json:"revoked_by,omitempty"`
	// Archived is set on a certificate that left the in-memory inventory
	// for the archive, some time after it expired (cert_archive_after).
	Archived bool `json:"archived,omitempty"`
}

// RenewCall asks every enrolled gateway whose current certificate was
// recorded before At to renew it now (govnetctl cert renew-all): after a
// change of the CA, for example. The controllers tell each gateway over
// its stream (StreamProtoRenew), at once or when it next connects.
type RenewCall struct {
	At     time.Time `json:"at"`              // stamped by the controller
	Index  uint64    `json:"index,omitempty"` // the raft index that recorded it
	Actor  string    `json:"actor"`           // the officer who made it
	Reason string    `json:"reason"`          // why; sent to the gateways
}

// RenewCallStatus is the last renewal call, if any, and how far it got:
// the enrolled gateways, and those whose current certificate still
// predates it (Waiting lists at most 100 of them).
type RenewCallStatus struct {
	Call     *RenewCall `json:"call,omitempty"`
	Gateways int        `json:"gateways"`
	Pending  int        `json:"pending"`
	Waiting  []string   `json:"waiting,omitempty"`
}

// RevokeRequest revokes one certificate by serial, or a gateway and every
// valid certificate it holds.
type RevokeRequest struct {
	Serial  string `json:"serial,omitempty"`
	Gateway string `json:"gateway,omitempty"`
	Reason  string `json:"reason"` // RFC 5280 name, e.g. keyCompromise
}

// RevokeResponse says what a revocation changed.
type RevokeResponse struct {
	RaftIndex    uint64        `json:"raft_index"`
	Gateway      string        `json:"gateway,omitempty"`
	Certificates []Certificate `json:"certificates"`
	// Enforced is the time from the command's commit to the moment the
	// answering node's compiled views no longer give the revoked gateway
	// to any peer (zero when no gateway was revoked).
	Enforced time.Duration `json:"enforced_ns,omitempty"`
}

// RenewRequest asks for a new certificate for the gateway presenting its
// current one.
type RenewRequest struct {
	CSR string `json:"csr"` // PEM, for a key the gateway generated
}

// RenewResponse carries the renewed certificate.
type RenewResponse struct {
	Certificate string `json:"certificate"` // PEM chain: leaf, intermediate
	Serial      string `json:"serial"`
}

// PolicyPlan says what publishing a policy would change: per gateway, the
// inbound flows it gains and loses and the peers it gains and loses. Its
// counts are the blast radius of the change.
type PolicyPlan struct {
	Gateways      []GatewayPlan `json:"gateways"` // only gateways that change, sorted by id
	FlowsGained   int           `json:"flows_gained"`
	FlowsLost     int           `json:"flows_lost"`
	PeersGained   int           `json:"peers_gained"`
	PeersLost     int           `json:"peers_lost"`
	Unchanged     int           `json:"unchanged"` // gateways whose view does not change
	TotalGateways int           `json:"total_gateways"`
	// ClosedRefs are the places where the draft names an agency code the
	// registry has closed: it compiles, and they select nothing.
	ClosedRefs []PolicyRef `json:"closed_refs,omitempty"`
	// IdleRules are the draft's rules that allow nothing with the gateways
	// enrolled now (one side selects none of them).
	IdleRules []IdleRule `json:"idle_rules,omitempty"`
}

// IdleRule is a policy rule that allows nothing as the registry stands.
type IdleRule struct {
	Rule  int    `json:"rule"`  // 1-based
	Where string `json:"where"` // file:line:column
	Why   string `json:"why"`
}

// GatewayPlan is one gateway's part of a PolicyPlan.
type GatewayPlan struct {
	Gateway     string   `json:"gateway"`
	Agency      string   `json:"agency"`
	Gained      []Flow   `json:"gained,omitempty"`
	Lost        []Flow   `json:"lost,omitempty"`
	PeersGained []string `json:"peers_gained,omitempty"`
	PeersLost   []string `json:"peers_lost,omitempty"`
}

// Flow is an inbound flow a gateway admits: from a source (named by the
// gateway whose overlay address or LAN it is, when known) on a protocol
// and port.
type Flow struct {
	From     string       `json:"from,omitempty"` // gateway id; empty when no gateway owns the source
	Source   netip.Prefix `json:"source"`
	Protocol string       `json:"protocol"`
	Port     uint16       `json:"port,omitempty"`
}

// DefaultCoverageWindow is how recently a gateway must have reported to
// count as healthy in a coverage report when the request names no window:
// an agent whose state did not change reports every 2 minutes
// (netagent.ReportRefresh), so a gateway that missed a report, or moved
// to another controller, still counts.
const DefaultCoverageWindow = 5 * time.Minute

// CoverageReport says, per province and per level, how many registered
// agencies have a healthy enrolled gateway: one that reported within
// Window, holds a valid certificate (not expired, not revoked) and whose
// ruleset digest is the one its current view compiles to.
type CoverageReport struct {
	Generated time.Time `json:"generated"`
	Window    string    `json:"window"` // Go duration
	RaftIndex uint64    `json:"raft_index"`
	Total     Coverage  `json:"total"`
	// Levels: central, province, district, commune, unit, in that order
	// (a level without agencies is left out).
	Levels []Coverage `json:"levels"`
	// Provinces, ranked: highest coverage first, ties by code. An agency
	// belongs to the province its parent chain leads to; central bodies
	// and their units belong to none.
	Provinces []Coverage `json:"provinces"`
}

// Coverage is one row of a CoverageReport.
type Coverage struct {
	Rank     int    `json:"rank,omitempty"`  // provinces: 1 is best; equal coverage, equal rank
	Code     string `json:"code,omitempty"`  // provinces: the province's code
	Name     string `json:"name,omitempty"`  // provinces: its name
	Level    string `json:"level,omitempty"` // levels: the level
	Agencies int    `json:"agencies"`        // registered, not closed
	Enrolled int    `json:"enrolled"`        // of them, with at least one enrolled gateway
	Healthy  int    `json:"healthy"`         // of them, with at least one healthy gateway
	// Coverage is Healthy / Agencies (0 when there are none).
	Coverage float64 `json:"coverage"`
	// Why the enrolled gateways of these agencies that are not healthy
	// are not: counts of gateways (one gateway may have several causes).
	Gateways     int `json:"gateways"` // enrolled gateways
	HealthyGWs   int `json:"healthy_gateways"`
	Stale        int `json:"stale"`          // no report within the window
	CertInvalid  int `json:"cert_invalid"`   // certificate expired, revoked or unknown
	RulesetNotOK int `json:"ruleset_not_ok"` // ruleset mismatch or not yet attested
}

// AgencyImport registers many agencies in one all-or-nothing step.
type AgencyImport struct {
	Agencies []AgencyRow `json:"agencies"`
	DryRun   bool        `json:"dry_run,omitempty"` // check and say what would change; commit nothing
}

// AgencyRow is one agency of an import. Parent may be empty: the code's
// own parent is taken. A parent may be registered already or come earlier
// in the same import. Line, when set, is where the row came from (a CSV
// line) and is named in errors.
type AgencyRow struct {
	Code   string `json:"code"`
	Name   string `json:"name"`
	Parent string `json:"parent,omitempty"`
	Line   int    `json:"line,omitempty"`
}

// AgencyImportResult says what an import changed (or, dry, would change).
type AgencyImportResult struct {
	DryRun    bool     `json:"dry_run,omitempty"`
	RaftIndex uint64   `json:"raft_index,omitempty"`
	Added     []Agency `json:"added"`
	Renamed   []Agency `json:"renamed"`
	Unchanged int      `json:"unchanged"`
}

// AgencyMerge merges Sources into Into: see AgencyPlan.
type AgencyMerge struct {
	Sources []string `json:"sources"`
	Into    string   `json:"into"`
	DryRun  bool     `json:"dry_run,omitempty"`
}

// AgencyReparent moves one agency (and everything under it) under Parent.
type AgencyReparent struct {
	Parent string `json:"parent"`
	DryRun bool   `json:"dry_run,omitempty"`
}

// AgencyPlan is what a merger or a re-parenting does: computed from the
// registry before it is committed, returned as a preview (DryRun) and,
// identical, by the change itself.
type AgencyPlan struct {
	Kind      string        `json:"kind"` // merge or reparent
	Into      string        `json:"into"` // the survivor, or the new parent
	DryRun    bool          `json:"dry_run,omitempty"`
	RaftIndex uint64        `json:"raft_index,omitempty"` // of the committed change
	Closed    []string      `json:"closed"`               // codes closed (merged into Into)
	Agencies  []AgencyMove  `json:"agencies"`             // agencies whose parent changes
	Gateways  []GatewayMove `json:"gateways"`             // gateways that change agency
	// PolicyRefs are the places where the current policy names a code
	// this change closes: they keep compiling, and select nothing.
	PolicyRefs []PolicyRef `json:"policy_refs"`
	// Views is how the current policy's per-gateway views change: its
	// Gateways are the gateways whose view is recomputed to something new.
	Views *PolicyPlan `json:"views"`
}

// AgencyMove is an agency whose parent changes.
type AgencyMove struct {
	Code string `json:"code"`
	From string `json:"from,omitempty"`
	To   string `json:"to"`
}

// GatewayMove is a gateway that moves to another agency.
type GatewayMove struct {
	Gateway string `json:"gateway"`
	From    string `json:"from"`
	To      string `json:"to"`
}

// PolicyRef is a place in a policy that names an agency code.
type PolicyRef struct {
	Code  string `json:"code"`
	Where string `json:"where"` // file:line:column
	What  string `json:"what"`  // "group h01: subtree", "test 2: from", ...
}

// DecommissionRequest takes a gateway out of service for good.
type DecommissionRequest struct {
	Reason string `json:"reason,omitempty"` // why, in words, for the audit trail
}
