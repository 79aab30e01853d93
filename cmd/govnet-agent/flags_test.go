package main

import (
	"reflect"
	"testing"

	"github.com/govnet/govnet/internal/cli"
	"github.com/govnet/govnet/netagent"
	"github.com/spf13/pflag"
)

// TestEveryConfigKeyHasAFlag: deploy/examples/agent.yaml promises that
// every key can be overridden by the flag of the same name with '-' for
// '_' (the hsm: section by --hsm-*). A key added to netagent.Config
// without its flag fails here.
func TestEveryConfigKeyHasAFlag(t *testing.T) {
	renamed := map[string]string{"hsm.token_label": "hsm-token"}
	c := netagent.DefaultConfig()
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	bindConfig(fs, &c)
	for _, m := range cli.KeysWithoutFlags(fs, reflect.TypeFor[netagent.Config](), renamed) {
		t.Errorf("config key without its flag: %s", m)
	}
}
