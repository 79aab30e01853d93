// Package deploy holds what installs and runs govnet outside the source
// tree: systemd units (systemd/), example configuration files (examples/),
// the Debian packages (packaging/, a module of its own) and the
// network-namespace lab (lab/). Its tests check that the example
// configurations (their commented-out keys too) pass the programs'
// --check, that every command's --help runs and shows an example, that
// the units verify and keep the settings the programs need, and that the
// packages' sources exist and their libc6 dependency covers the binaries.
package deploy
