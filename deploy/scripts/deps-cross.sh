#!/usr/bin/env bash
# Installs the C cross compiler that `make cross` needs for linux/arm64,
# idempotently: nothing is fetched when it is already installed. Kept apart
# from deps.sh so that `make test` never installs a cross toolchain.
#
# govnetd and govnet-agent need it: they link the PKCS#11 library loader
# (cgo; the agent for a TLS key in the gateway's token). govnetctl builds for
# arm64 with CGO_ENABLED=0.
set -euo pipefail

. "$(dirname "$0")/apt.sh"
apt_ensure deps-cross gcc-aarch64-linux-gnu:--no-install-recommends libc6-dev-arm64-cross:--no-install-recommends
