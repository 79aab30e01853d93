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
  gcc               # cgo, for PKCS#11
  libc6-dev
  wireguard-tools:--no-install-recommends  # wg; without recommends it would pull a kernel image
)

missing=()
for p in "${pkgs[@]}"; do
  name=${p%%:*}
  if ! dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all system packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing ${missing[*]}; run as root (apt-get install)" >&2
  exit 1
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
plain=() norec=()
for p in "${missing[@]}"; do
  case $p in
    *:--no-install-recommends) norec+=("${p%%:*}") ;;
    *) plain+=("$p") ;;
  esac
done
[ ${#plain[@]} -eq 0 ] || apt-get install -y -qq "${plain[@]}"
[ ${#norec[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${norec[@]}"
command -v go >/dev/null || { echo "deps: Go is not installed (need Go 1.26; see go.mod)" >&2; exit 1; }
