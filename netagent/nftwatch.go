package netagent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Watch calls changed soon after another process commits a change to the
// agent's table, inet govnet: a rule added or deleted by hand, or the
// table deleted with everything else (`nft flush ruleset`, which Debian's
// nftables.service runs on every start and reload). Until then the
// overlay's packets meet no govnet rule at all; the reconcile tick alone
// would put the table back only up to a period later. It listens to
// nf_tables' multicast notifications (which need CAP_NET_ADMIN, as the
// table does) and returns when ctx ends, or with an error when it cannot
// listen. Events lost to a full socket buffer count as a change.
// The agent's own commits, by one of its threads, are not reported.
func (f *Firewall) Watch(ctx context.Context, changed func()) error {
	cfg := &netlink.Config{}
	if f.hasNetNS {
		cfg.NetNS = f.netns
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return fmt.Errorf("nftables: open netlink for notifications: %w", err)
	}
	defer c.Close()
	if err := c.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		return fmt.Errorf("nftables: join the notification group: %w", err)
	}
	_ = c.SetReadBuffer(4 << 20) // a large apply notifies every element
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	touched := false // the transaction under way touched the table
	for {
		msgs, err := c.Receive()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, unix.ENOBUFS):
			touched = false
			changed() // notifications were lost: look
			continue
		case err != nil:
			return fmt.Errorf("nftables: notifications: %w", err)
		}
		for _, m := range msgs {
			typ, body, ok := nftMessage(m)
			if !ok {
				continue
			}
			switch typ {
			case unix.NFT_MSG_NEWGEN: // the end of a transaction
				if touched && !ownThread(genPID(body)) {
					changed()
				}
				touched = false
			case unix.NFT_MSG_DELTABLE, unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_DELCHAIN,
				unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE, unix.NFT_MSG_NEWSET, unix.NFT_MSG_DELSET,
				unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM, unix.NFT_MSG_NEWOBJ, unix.NFT_MSG_DELOBJ:
				touched = touched || ourTable(body)
			}
		}
	}
}

// nftMessage returns the nf_tables message type of m and its body after
// the nfgenmsg header; ok is false for messages of other subsystems.
func nftMessage(m netlink.Message) (typ uint16, body []byte, ok bool) {
	if uint16(m.Header.Type)>>8 != unix.NFNL_SUBSYS_NFTABLES || len(m.Data) < 4 {
		return 0, nil, false
	}
	return uint16(m.Header.Type) & 0xff, m.Data, true
}

// ourTable says whether a table, chain, rule, set, element or object
// message names table inet govnet: the family is in the nfgenmsg header,
// and attribute 1 is the table's name in each of those messages
// (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE,
// NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE).
func ourTable(body []byte) bool {
	if body[0] != unix.NFPROTO_INET {
		return false
	}
	name, ok := attr(body[4:], 1)
	return ok && strings.TrimRight(string(name), "\x00") == TableName
}

// genPID is the id a NEWGEN notification names as the committer
// (NFTA_GEN_PROC_PID, big-endian: the committing thread's, as the kernel
// numbers tasks); 0 if it names none.
func genPID(body []byte) uint32 {
	v, ok := attr(body[4:], unix.NFTA_GEN_PROC_PID)
	if !ok || len(v) != 4 {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

// ownThread says whether the thread id is one of this process's. One
// that cannot be told (0, or ids of another pid namespace) counts as
// another's: the check that follows is a read of the table.
func ownThread(tid uint32) bool {
	if tid == 0 {
		return false
	}
	_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
	return err == nil
}

// attr returns the value of the first netlink attribute of type typ in b.
func attr(b []byte, typ uint16) ([]byte, bool) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, false
	}
	for ad.Next() {
		if ad.Type() == typ {
			return ad.Bytes(), true
		}
	}
	return nil, false
}
