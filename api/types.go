// Package api holds the wire types shared by govnetd, govnet-agent and
// govnetctl: requests and responses of the controller's HTTP API and the
// per-gateway view that the watch stream delivers.
package api

import (
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

// Agency is one agency of the state, identified by its QCVN 102:2016 code.
type Agency struct {
	Code   string `json:"code"`
	Name   string `json:"name"`
	Parent string `json:"parent,omitempty"` // derived from the code; empty for level 1
	Level  string `json:"level"`            // central, province, district, commune
}

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
	Report      *Report        `json:"report,omitempty"`
	// ExpectedDigest is the digest of the ruleset the gateway's current
	// view compiles to; Ruleset compares the report with it: "ok",
	// "mismatch" (the gateway's table is not what it was sent), or
	// "pending" (no report yet for the current view).
	ExpectedDigest string `json:"expected_digest,omitempty"`
	Ruleset        string `json:"ruleset,omitempty"`
}

// Ruleset attestation states of a gateway (Gateway.Ruleset).
const (
	RulesetOK       = "ok"
	RulesetMismatch = "mismatch"
	RulesetPending  = "pending"
)

// Report is what an agent says it applied.
type Report struct {
	PolicyVersion uint64    `json:"policy_version"`
	RaftIndex     uint64    `json:"raft_index"`
	RulesetDigest string    `json:"ruleset_digest"`
	Peers         int       `json:"peers"`
	LastHandshake time.Time `json:"last_handshake,omitzero"` // most recent WireGuard handshake of any peer
	At            time.Time `json:"at,omitzero"`             // stamped by the controller
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
	Gateway string    `json:"gateway"`
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
}

// TokenRequest asks for an enrollment token for a gateway.
type TokenRequest struct {
	TTL string `json:"ttl,omitempty"` // Go duration; default 1h
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
}

// Member is one controller node of the cluster.
type Member struct {
	Node     string `json:"node"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr,omitempty"`
	Suffrage string `json:"suffrage,omitempty"` // voter, nonvoter; empty if not in raft's configuration
	Leader   bool   `json:"leader,omitempty"`
}

// JoinRequest asks the cluster to add a controller node as a voter.
type JoinRequest struct {
	Node     string `json:"node"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
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
}

// Kinds of four-eyes request.
const (
	RequestToken  = "token"  // issue an enrollment token for a pending gateway
	RequestPolicy = "policy" // publish a policy
	RequestRevoke = "revoke" // revoke an enrolled gateway
)

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
}

// Certificate statuses in the inventory.
const (
	CertValid   = "valid"
	CertRevoked = "revoked"
)

// Certificate is one certificate the CA issued, as the replicated
// inventory records it.
type Certificate struct {
	Serial    string    `json:"serial"` // hex, lowercase
	Kind      string    `json:"kind"`   // gateway, person or node (the profile)
	Subject   string    `json:"subject"`
	Agency    string    `json:"agency,omitempty"`  // gateways
	Gateway   string    `json:"gateway,omitempty"` // gateways: the gateway it identifies
	Role      string    `json:"role,omitempty"`    // people
	SANs      []string  `json:"sans,omitempty"`
	Issuer    string    `json:"issuer"` // issuer id (ca.IssuerID of the intermediate)
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	Requester string    `json:"requester,omitempty"`
	Approver  string    `json:"approver,omitempty"` // four-eyes: who approved the request behind it
	Issued    time.Time `json:"issued,omitzero"`    // when the inventory recorded it (leader's clock)
	Status    string    `json:"status"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	// Reason is the RFC 5280 CRLReason code of a revoked certificate;
	// ReasonName its name.
	Reason     int    `json:"reason,omitempty"`
	ReasonName string `json:"reason_name,omitempty"`
	RevokedBy  string `json:"revoked_by,omitempty"`
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
