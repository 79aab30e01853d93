// Command govnet-pkg builds govnet's Debian packages from nfpm
// configuration files, with nfpm v2.48.0 used as a library.
//
// It is `nfpm package --packager deb` for several configs at once. The nfpm
// command itself cannot be built here: it links its RPM and MSIX packagers,
// whose modules the Go module proxy refuses; the deb packager needs neither.
// This directory is a module of its own so that nfpm's dependencies stay out
// of govnet's go.mod.
//
//	govnet-pkg --target dist/ govnetd.yaml govnet-agent.yaml govnetctl.yaml
//
// Paths in the configs are relative to the working directory, and
// ${VAR} in them is taken from the environment (VERSION, ARCH, BINDIR, ...).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the "deb" packager
)

func main() {
	target := flag.String("target", "dist", "directory to write the packages to")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: govnet-pkg [--target DIR] NFPM-CONFIG...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	var errs []error
	for _, config := range flag.Args() {
		path, err := build(config, *target)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", config, err))
			continue
		}
		fmt.Println(path)
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(os.Stderr, "govnet-pkg:", err)
		os.Exit(1)
	}
}

// build writes the Debian package that config describes into dir and
// returns its path.
func build(config, dir string) (string, error) {
	cfg, err := nfpm.ParseFile(config)
	if err != nil {
		return "", err
	}
	info, err := cfg.Get("deb")
	if err != nil {
		return "", err
	}
	info = nfpm.WithDefaults(info)
	pkg, err := nfpm.Get("deb")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, pkg.ConventionalFileName(info))
	info.Target = path
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	if err := pkg.Package(info, f); err != nil {
		f.Close()
		os.Remove(path)
		return "", err
	}
	return path, f.Close()
}
