package main

import (
	"reflect"
	"strings"
	"testing"

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
	var walk func(prefix string, typ reflect.Type)
	walk = func(prefix string, typ reflect.Type) {
		for f := range typ.Fields() {
			key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if key == "" || key == "-" {
				continue
			}
			key = prefix + key
			if f.Type.Kind() == reflect.Struct && f.Type.PkgPath() != "time" {
				walk(key+".", f.Type)
				continue
			}
			flag, ok := renamed[key]
			if !ok {
				flag = strings.NewReplacer(".", "-", "_", "-").Replace(key)
			}
			if fs.Lookup(flag) == nil {
				t.Errorf("config key %s has no flag --%s", key, flag)
			}
		}
	}
	walk("", reflect.TypeFor[netagent.Config]())
}
