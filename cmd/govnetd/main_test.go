package main

import (
	"reflect"
	"strings"
	"testing"

	"github.com/govnet/govnet/controller"
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
	walk("", reflect.TypeFor[controller.Config]())
}
