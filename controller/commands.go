package controller

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"github.com/govnet/govnet/api"
)

// CommandType names a replicated command. The list is append-only: a
// value, once released, keeps its meaning forever.
type CommandType uint8

// IgnoreUnknownTypeFlag marks a command that a node which does not know
// its type may skip instead of halting: set it on commands whose loss
// cannot corrupt state (reports, for example).
const IgnoreUnknownTypeFlag CommandType = 128

const (
	CmdInitNetwork   CommandType = 1
	CmdAgencyUpsert  CommandType = 2
	CmdGatewayAdd    CommandType = 3
	CmdTokenIssue    CommandType = 4
	CmdGatewayEnroll CommandType = 5
	CmdPolicyPublish CommandType = 6
	CmdGatewayReport CommandType = 7 | IgnoreUnknownTypeFlag
)

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
	}
	return fmt.Sprintf("command(%d)", uint8(t))
}

// Meta is stamped by the node that submits a command: who asked, and the
// leader's clock, so that Apply never reads a clock of its own.
type Meta struct {
	Actor string    `json:"actor"`
	At    time.Time `json:"at"`
}

// InitNetworkRequest sets the overlay address plan, once.
type InitNetworkRequest struct {
	Meta
	OverlayPrefix netip.Prefix `json:"overlay_prefix"`
}

// AgencyUpsertRequest registers or renames an agency.
type AgencyUpsertRequest struct {
	Meta
	Code string `json:"code"`
	Name string `json:"name"`
}

// GatewayAddRequest registers a gateway, pending enrollment.
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

// encodeCommand frames a command as its type byte followed by JSON.
func encodeCommand(t CommandType, req any) ([]byte, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", t, err)
	}
	return append([]byte{byte(t)}, body...), nil
}
