// Package cli holds what the three govnet commands share: logging setup
// and the rule that a flag given on the command line overrides the same
// key in the config file.
package cli

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"golang.org/x/term"
)

// Logger returns a slog logger: text on a terminal, JSON otherwise.
func Logger(w io.Writer, level string) *slog.Logger {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// LoadConfig loads a config file into the struct the flags of fs point
// into, then puts back every flag the user set, so the command line wins.
// With an empty path only the flags and defaults apply.
func LoadConfig(fs *pflag.FlagSet, path string, load func(path string) error) error {
	if path == "" {
		return nil
	}
	set := map[string][]string{}
	fs.Visit(func(f *pflag.Flag) {
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			set[f.Name] = sv.GetSlice()
		} else {
			set[f.Name] = []string{f.Value.String()}
		}
	})
	if err := load(path); err != nil {
		return err
	}
	for name, vals := range set {
		f := fs.Lookup(name)
		var err error
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			err = sv.Replace(vals)
		} else {
			err = f.Value.Set(vals[0])
		}
		if err != nil {
			return fmt.Errorf("--%s %s: %w", name, strings.Join(vals, ","), err)
		}
	}
	return nil
}
