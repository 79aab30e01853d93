package main

import (
	"reflect"
	"testing"

	"github.com/govnet/govnet/controller"
	"github.com/govnet/govnet/internal/cli"
	"github.com/spf13/pflag"
)

// TestEveryConfigKeyHasAFlag: the config file's promise (deploy/examples/
// govnetd.yaml) that every key can be overridden by a flag. A key's flag
// is its name with '-' for '_' and its section as a prefix, but for the
// names below.
func TestEveryConfigKeyHasAFlag(t *testing.T) {
	renamed := map[string]string{
		"join":             "join-addr",
		"hsm.token_label":  "hsm-token",
		"profiles.gateway": "gateway-cert-lifetime",
		"profiles.person":  "person-cert-lifetime",
		"profiles.node":    "node-cert-lifetime",
	}
	c := controller.DefaultConfig()
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	bindConfig(fs, &c)
	for _, m := range cli.KeysWithoutFlags(fs, reflect.TypeFor[controller.Config](), renamed) {
		t.Errorf("config key without its flag: %s", m)
	}
}
