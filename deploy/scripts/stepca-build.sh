#!/usr/bin/env bash
# Builds standalone step-ca, for the CA benchmark's comparison (`make
# bench`, docs/performance.md), from the Go module proxy at the version of
# github.com/smallstep/certificates in go.mod, with cgo (its PKCS#11 KMS
# is built only with cgo). Prints the binary's path. Cached in
# .bench-cache/ (git-ignored): nothing is fetched or built when the binary
# of that version is there.
#
# It is built in a throwaway module of its own: inside govnet's module
# `go build github.com/smallstep/certificates/cmd/step-ca` fails, because
# step-ca's main imports KMS and CAS back ends (cloudkms, tpmkms, yubikey,
# ...) whose modules govnet's go.sum does not list, and `go mod tidy` is
# not an option here.
set -euo pipefail
cd "$(dirname "$0")/../.."
version=$(go list -m -f '{{.Version}}' github.com/smallstep/certificates)
cache=.bench-cache
bin=$cache/step-ca-$version
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
mod=$cache/step-ca-build
rm -rf "$mod"
mkdir -p "$mod"
cat >"$mod/go.mod" <<MOD
module govnet.invalid/stepcabuild

go $(go env GOVERSION | sed 's/^go//; s/\.[0-9]*$//')
MOD
(
  cd "$mod"
  GOFLAGS=-mod=mod go get "github.com/smallstep/certificates/cmd/step-ca@$version" >&2
  # noyubikey: its YubiKey KMS needs libpcsclite (not installed, not
  # needed); PKCS#11 stays in (cgo && !nopkcs11).
  CGO_ENABLED=1 go build -tags noyubikey -o step-ca github.com/smallstep/certificates/cmd/step-ca >&2
)
mv "$mod/step-ca" "$bin"
rm -rf "$mod"
echo "$bin"
