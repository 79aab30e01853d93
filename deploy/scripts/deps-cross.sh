#!/usr/bin/env bash
# Installs the C cross compiler that `make cross` needs for linux/arm64,
# idempotently: nothing is fetched when it is already installed. Kept apart
# from deps.sh so that `make test` never installs a cross toolchain.
#
# Only govnetd needs it: it links the PKCS#11 library loader (cgo). The agent
# and govnetctl build for arm64 with CGO_ENABLED=0.
set -euo pipefail

pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps-cross: cross compiler present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "deps-cross: missing ${missing[*]}; run as root (apt-get install)" >&2
  exit 1
fi
echo "deps-cross: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
