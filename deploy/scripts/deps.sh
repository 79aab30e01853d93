#!/usr/bin/env bash
# Installs the system packages govnet needs, idempotently: nothing is
# fetched when everything is already installed.
set -euo pipefail

# package[:apt-options]
pkgs=(
  softhsm2          # PKCS#11 HSM for development, tests and the demo
  opensc            # pkcs11-tool, to inspect tokens
  nftables          # nft, to inspect the govnet table
  iproute2          # ip netns, veth, bridge
  openssl           # certificate checks in tests
  iputils-ping      # ping across the lab's overlay
  curl              # the demo fetches a CRL as an auditor does
  gcc               # cgo, for PKCS#11
  libc6-dev
  wireguard-tools:--no-install-recommends  # wg; without recommends it would pull a kernel image
)

. "$(dirname "$0")/apt.sh"
apt_ensure deps "${pkgs[@]}"
command -v go >/dev/null || { echo "deps: Go is not installed (need Go 1.26; see go.mod)" >&2; exit 1; }
