// Package netagent is the data plane of govnet-agent: it keeps a gateway's
// WireGuard device ([Device]) and its nftables policy ([Firewall]) equal to
// the view the controller publishes. Both reconcile against what the kernel
// actually holds rather than editing it step by step, and say when nothing
// changed. The Firewall rebuilds its whole table in one atomic batch and
// reads it back every time. The Device applies a change to its peers as one
// ConfigureDevice of the peers that changed since its last apply, and
// compares the whole device and its routes with the desired state in
// [Device.Repair], which the agent runs every reconcile period.
package netagent

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/policy/nft"
)

// TableName is the one nftables table (family inet) the agent owns. It never
// reads or writes any other table.
const TableName = nft.TableName

// Names of the sets in table inet govnet; see package policy/nft, which
// builds the table.
const (
	SetAllow4              = nft.SetAllow4
	SetAllow4NetPrefix     = nft.SetAllow4NetPrefix
	SetAllow4ICMP          = nft.SetAllow4ICMP
	SetAllow4ICMPNetPrefix = nft.SetAllow4ICMPNetPrefix
)

// SetAllow4Net is the name of the TCP/UDP set for source prefixes of
// length bits (0–31), e.g. allow4_net_24.
func SetAllow4Net(bits int) string { return nft.SetAllow4Net(bits) }

// SetAllow4ICMPNet is the name of the ICMP set for source prefixes of
// length bits (0–31), e.g. allow4_icmp_net_24.
func SetAllow4ICMPNet(bits int) string { return nft.SetAllow4ICMPNet(bits) }

// maxElementsPerMessage bounds one NEWSETELEM message. google/nftables
// v0.3.0 silently truncates a larger element list (a 16-bit attribute length
// overflows above ~2,700 elements: 10k elements become 169, err == nil), so
// the elements go in chunks, all in the same batch.
const maxElementsPerMessage = 1000

var (
	// ErrUnsupportedRule marks rules Apply could not express (bad prefix,
	// IPv6 source, unknown protocol, missing port). Apply installs the other
	// rules and returns the digest with an error wrapping this one.
	ErrUnsupportedRule = nft.ErrUnsupportedRule
	// ErrVerify means the kernel holds something other than what Apply
	// sent, found by reading the table back after installing it.
	ErrVerify = errors.New("nftables read-back mismatch")
	// ErrNoTable means table inet govnet does not exist.
	ErrNoTable = errors.New("table inet govnet does not exist")
)

// Firewall installs and reads back the agent's table, inet govnet.
// Its methods are safe for concurrent use.
type Firewall struct {
	iface    string
	netns    int
	hasNetNS bool
	log      *slog.Logger

	mu sync.Mutex
	// beforeFlush, set by tests only, may add messages to the batch just
	// before it is sent (e.g. one the kernel rejects).
	beforeFlush func(c *nftables.Conn, t *nftables.Table)
}

// FirewallOption configures a Firewall.
type FirewallOption func(*Firewall)

// WithNetNS makes the Firewall work in the network namespace fd refers to
// instead of the caller's (tests, in-process use).
func WithNetNS(fd int) FirewallOption {
	return func(f *Firewall) { f.netns, f.hasNetNS = fd, true }
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) FirewallOption {
	return func(f *Firewall) {
		if l != nil {
			f.log = l
		}
	}
}

// NewFirewall returns a Firewall that filters what arrives on iface, the
// WireGuard interface. Traffic from any other interface is never touched,
// so the management path stays open whatever the policy. It checks that
// nf_tables can be reached but changes nothing.
func NewFirewall(iface string, opts ...FirewallOption) (*Firewall, error) {
	if iface == "" || len(iface) >= unix.IFNAMSIZ || strings.ContainsAny(iface, "/ \x00") {
		return nil, fmt.Errorf("nftables: invalid interface name %q", iface)
	}
	f := &Firewall{iface: iface, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(f)
	}
	f.log = f.log.With("table", "inet "+TableName, "iface", iface)
	c, err := f.conn(0)
	if err != nil {
		return nil, err
	}
	if _, err := c.ListTablesOfFamily(nftables.TableFamilyINet); err != nil {
		return nil, fmt.Errorf("nftables: list tables: %w", err)
	}
	return f, nil
}

// conn opens a netlink connection to nf_tables with socket buffers sized
// for a batch of about elements set elements.
func (f *Firewall) conn(elements int) (*nftables.Conn, error) {
	buf := 1<<20 + 256*elements
	opts := []nftables.ConnOption{nftables.WithSockOptions(func(c *netlink.Conn) error {
		// As root these use SO_*BUFFORCE, past net.core.[rw]mem_max.
		if err := c.SetWriteBuffer(buf); err != nil {
			return fmt.Errorf("set netlink write buffer: %w", err)
		}
		if err := c.SetReadBuffer(buf); err != nil {
			return fmt.Errorf("set netlink read buffer: %w", err)
		}
		return nil
	})}
	if f.hasNetNS {
		opts = append(opts, nftables.WithNetNSFd(f.netns))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: open netlink: %w", err)
	}
	return c, nil
}

// Apply replaces table inet govnet with one that accepts, on the WireGuard
// interface, exactly the flows in rules (plus replies to connections
// opened from this side), forwards them only to the gateway's own LANs
// lans (nil: not known, any destination), and drops everything else
// arriving there. An empty rules list means deny-all on the overlay. The
// table is built by [nft.Build].
//
// The whole table is built and sent in one netlink batch (add table, delete
// it, add it again with its sets, elements and chains), which the kernel
// applies atomically: if the batch fails, the previous table stays as it
// was. After the batch Apply reads the table back, checks every set holds
// the number of elements sent (ErrVerify otherwise) and returns the digest
// of what the kernel holds (see [Firewall.Digest]).
//
// Rules that cannot be expressed are left out: dropping an allow rule only
// denies more, so the rest is still installed, and the returned error wraps
// ErrUnsupportedRule alongside a valid digest.
//
// On success the digest equals [nft.ExpectedDigest](rules, lans), which the
// controller computes for the gateway; if it does not (a kernel that stores
// the table differently), Apply logs it as an error but still succeeds.
func (f *Firewall) Apply(rules []api.Rule, lans []netip.Prefix) (digest string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	start := time.Now()

	d, ruleErr := nft.Build(rules, lans, f.iface)
	c, err := f.conn(d.Elements())
	if err != nil {
		return "", err
	}
	t := d.Table
	c.AddTable(t)
	c.DelTable(t) // add-then-delete: no error whether or not it existed
	c.AddTable(t)
	for _, s := range d.Sets {
		if err := c.AddSet(s.Set, nil); err != nil {
			return "", fmt.Errorf("nftables: add set %s: %w", s.Set.Name, err)
		}
		for chunk := range slices.Chunk(s.Elems, maxElementsPerMessage) {
			if err := c.SetAddElements(s.Set, chunk); err != nil {
				return "", fmt.Errorf("nftables: add elements to set %s: %w", s.Set.Name, err)
			}
		}
	}
	for _, ch := range d.Chains {
		c.AddChain(ch.Chain)
		for _, r := range ch.Rules {
			c.AddRule(r)
		}
	}
	if f.beforeFlush != nil {
		f.beforeFlush(c, t)
	}
	if err := c.Flush(); err != nil {
		return "", fmt.Errorf("nftables: install table inet %s (previous table kept): %w", TableName, err)
	}
	flushed := time.Since(start)

	kt, err := f.read()
	if err != nil {
		return "", fmt.Errorf("nftables: read back: %w", err)
	}
	var verr error
	for _, s := range d.Sets {
		got := len(kt.Elements(s.Set.Name))
		if got != len(s.Elems) {
			verr = errors.Join(verr, fmt.Errorf("%w: set %s holds %d elements, sent %d", ErrVerify, s.Set.Name, got, len(s.Elems)))
		}
	}
	if verr != nil {
		return "", verr
	}
	digest = kt.Digest(f.iface)
	// The same digest as nft.ExpectedDigest(rules, lans), the controller's
	// expectation, unless this kernel stores the table differently.
	if want, err := d.Digest(); err != nil || want != digest {
		f.log.Error("digest of the installed table differs from the one the controller expects",
			"ruleset_digest", digest, "expected", want, "err", err)
	}
	f.log.Info("nftables table installed",
		"ruleset_digest", digest, "rules", len(rules), "elements", d.Elements(),
		"flush", flushed.Round(time.Microsecond), "took", time.Since(start).Round(time.Microsecond))
	if ruleErr != nil {
		f.log.Warn("nftables rules left out", "err", ruleErr)
	}
	return digest, ruleErr
}

// Digest returns "sha256:" and the hex SHA-256 of [Firewall.Render]: it
// depends only on what table inet govnet holds (chains, rules with their
// expressions, sets and their sorted elements), not on handles, counters,
// the order elements were added or the name of the WireGuard interface, so
// the same rules give the same digest on every run and on every gateway —
// the one [nft.ExpectedDigest] computes from the rules without a kernel —
// and any edit made behind the agent's back changes it.
func (f *Firewall) Digest() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	kt, err := f.read()
	if err != nil {
		return "", err
	}
	return kt.Digest(f.iface), nil
}

// Render returns the canonical text rendering of table inet govnet as the
// kernel holds it ([nft.Table.Render], the interface name shown as
// [nft.IfacePlaceholder]), the input of [Firewall.Digest].
func (f *Firewall) Render() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	kt, err := f.read()
	if err != nil {
		return "", err
	}
	return kt.Render(f.iface), nil
}

// Remove deletes table inet govnet; it is not an error if it does not exist.
func (f *Firewall) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.conn(0)
	if err != nil {
		return err
	}
	t := nft.NewTable()
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: delete table inet %s: %w", TableName, err)
	}
	f.log.Info("nftables table removed")
	return nil
}

// ---- reading the table back ----

// read returns table inet govnet as the kernel holds it.
func (f *Firewall) read() (*nft.Table, error) {
	c, err := f.conn(0)
	if err != nil {
		return nil, err
	}
	t, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNoTable
		}
		return nil, fmt.Errorf("nftables: get table: %w", err)
	}
	kt := &nft.Table{Flags: t.Flags}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("nftables: list sets: %w", err)
	}
	for _, s := range sets {
		elems, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("nftables: list elements of set %s: %w", s.Name, err)
		}
		kt.Sets = append(kt.Sets, nft.Set{Set: s, Elems: elems})
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nftables: list chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == TableName {
			kt.Chains = append(kt.Chains, ch)
		}
	}
	if kt.Rules, err = f.dumpRules(); err != nil {
		return nil, fmt.Errorf("nftables: list rules: %w", err)
	}
	return kt, nil
}

// dumpRules reads the table's rules with their raw expressions.
// google/nftables drops expressions it cannot parse (e.g. byteorder), which
// would let an edit hide from the digest, so the rules are read here and
// every expression is kept byte for byte.
func (f *Firewall) dumpRules() ([]nft.Rule, error) {
	cfg := &netlink.Config{}
	if f.hasNetNS {
		cfg.NetNS = f.netns
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetReadBuffer(1 << 20)
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: []byte(TableName + "\x00")}})
	if err != nil {
		return nil, err
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return nil, err
	}
	var rules []nft.Rule
	for _, m := range msgs {
		if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWRULE) || len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		var r nft.Rule
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_CHAIN:
				r.Chain = ad.String()
			case unix.NFTA_RULE_USERDATA:
				r.Userdata = bytes.Clone(ad.Bytes())
			case unix.NFTA_RULE_EXPRESSIONS:
				ad.Nested(func(list *netlink.AttributeDecoder) error {
					for list.Next() {
						var e nft.Expr
						list.Nested(func(el *netlink.AttributeDecoder) error {
							for el.Next() {
								switch el.Type() {
								case unix.NFTA_EXPR_NAME:
									e.Name = el.String()
								case unix.NFTA_EXPR_DATA:
									e.Data = bytes.Clone(el.Bytes())
								}
							}
							return nil
						})
						r.Exprs = append(r.Exprs, e)
					}
					return nil
				})
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// unmapBits is how many prefix bits an IPv4-mapped IPv6 address carries
// in front of the IPv4 part.
func unmapBits(a netip.Addr) int {
	if a.Is4In6() {
		return 96
	}
	return 0
}
