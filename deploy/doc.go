// Package deploy holds what installs and runs govnet outside the source
// tree: systemd units (systemd/), example configuration files (examples/),
// the Debian packages (packaging/, a module of its own) and the
// network-namespace lab (lab/). Its tests check that the example
// configurations pass the programs' --check and that every command's
// --help runs and shows an example.
package deploy
