//go:build ignore

// gen_smallkeys writes the tables embedded for the lint
// e_govnet_ecdsa_small_private_key (smallkey.go): run by `go generate` in
// ca/. TestSmallKeyTables checks that they are what it writes.
package main

import (
	"crypto/elliptic"
	"log"
	"os"

	"github.com/govnet/govnet/ca/internal/smallkey"
)

func main() {
	for file, curve := range map[string]elliptic.Curve{
		"smallkeys_p256.bin": elliptic.P256(),
		"smallkeys_p384.bin": elliptic.P384(),
	} {
		table, err := smallkey.Build(curve)
		if err == nil {
			err = os.WriteFile(file, table, 0o644)
		}
		if err != nil {
			log.Fatal(err)
		}
	}
}
