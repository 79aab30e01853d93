// Package e2e holds end-to-end tests of the whole system: real govnetd and
// govnet-agent processes in network namespaces, a SoftHSM2 token, the
// kernel's nftables and WireGuard devices, and real packets.
package e2e
