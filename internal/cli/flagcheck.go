package cli

import (
	"reflect"
	"strings"

	"github.com/spf13/pflag"
)

// KeysWithoutFlags lists the config keys of typ (a config struct, its
// yaml tags; a nested struct is a section, its keys "section.key") that
// have no flag in fs, each as "key: --flag". A key's flag is its name
// with '-' for '.' and '_', unless renamed names it. The commands' tests
// hold every key to the config files' promise: a flag overrides it.
func KeysWithoutFlags(fs *pflag.FlagSet, typ reflect.Type, renamed map[string]string) []string {
	var missing []string
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
				missing = append(missing, key+": --"+flag)
			}
		}
	}
	walk("", typ)
	return missing
}
