# govnet. `make demo` and `make test` do everything on a fresh machine
# (as root): they install what they need first.
GO       ?= go
BIN      := bin
CMDS     := govnetd govnet-agent govnetctl
PKGS     := ./...
export CGO_ENABLED := 1

# In CI a privileged test that skips is a failure.
ifeq ($(CI),true)
export GOVNET_REQUIRE_PRIVILEGED := 1
endif

.PHONY: all deps build test race unit fuzz bench bench-fanout lint demo demo-down e2e-long clean cross package

all: build

deps:
	@deploy/scripts/deps.sh

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(CMDS))
	$(GO) build -o $(BIN)/labtool ./deploy/lab/labtool

# Unit and privileged integration tests (SoftHSM2, nftables and WireGuard
# in throwaway network namespaces), with the race detector.
test: deps build
	$(GO) vet $(PKGS)
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

race: test

# Quick run without the race detector.
unit:
	$(GO) test -count=1 $(PKGS)

FUZZTIME ?= 20s
fuzz:
	$(GO) test ./agency -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME)
	$(GO) test ./policy -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./policy -run '^$$' -fuzz '^FuzzParseRegistry$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/agencycsv -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./ca -run '^$$' -fuzz FuzzParseCSR -fuzztime $(FUZZTIME)
	$(GO) test ./ca -run '^$$' -fuzz FuzzOCSPRequest -fuzztime $(FUZZTIME)
	$(GO) test ./controller -run '^$$' -fuzz FuzzAPIRequest -fuzztime $(FUZZTIME)
	$(GO) test ./controller -run '^$$' -fuzz FuzzStreamLine -fuzztime $(FUZZTIME)
	$(GO) test ./controller -run '^$$' -fuzz '^FuzzSnapshot$$' -fuzztime $(FUZZTIME)
	$(GO) test ./api -run '^$$' -fuzz FuzzBackupSignature -fuzztime $(FUZZTIME)
	$(GO) test ./api -run '^$$' -fuzz FuzzViewDelta -fuzztime $(FUZZTIME)
	$(GO) test ./controller -run '^$$' -fuzz '^FuzzPackedReports$$' -fuzztime $(FUZZTIME)
	$(GO) test ./api -run '^$$' -fuzz '^FuzzReadAuditExport$$' -fuzztime $(FUZZTIME)

# Benchmarks on the real kernel, SoftHSM2 and wireguard-go (root; they fail
# rather than skip), ~4 minutes, then bench-fanout (~9 minutes with its
# clusters kept in .bench-cache/, ~17 the first time, which enrolls them).
# Prints the go test output, then a table of
# the figures; merges them into bench-results.json (other harnesses' entries
# kept); the raw output stays in $(BENCH_LOG). Exits non-zero if a benchmark
# fails or a figure is missing. docs/performance.md explains every figure.
BENCH_LOG := $(BIN)/bench.log
BENCH_MAP := internal/benchjson/results.map
bench: SHELL := /bin/bash
bench: deps
	@mkdir -p $(BIN); : > $(BENCH_LOG); fail=0; \
	export GOVNET_REQUIRE_PRIVILEGED=1; \
	run() { \
		echo "+ go test $$*"; \
		$(GO) test -run '^$$' -timeout 15m "$$@" 2>&1 | tee -a $(BENCH_LOG); \
		[ "$${PIPESTATUS[0]}" -eq 0 ] || { echo "bench: go test $$* failed" >&2; fail=1; }; \
	}; \
	uptime | tee -a $(BENCH_LOG); \
	run ./hsm -bench '^BenchmarkSign$$' -benchtime 2s -count 3; \
	run ./ca -bench '^BenchmarkIssue(Parallel)?$$' -benchtime 2s -count 3; \
	run ./controller -bench '^BenchmarkIssueAPI$$' -benchtime 1000x -count 3; \
	run ./controller -bench '^BenchmarkIssueStream$$' -benchtime 1000x -count 3; \
	run ./controller -bench '^BenchmarkReissue20000$$' -benchtime 1x; \
	if stepca=$$(deploy/scripts/stepca-build.sh); then \
		export STEPCA_BIN=$(CURDIR)/$$stepca; \
		run ./internal/stepcabench -bench '^BenchmarkStepCAIssueAPI$$' -benchtime 1000x -count 3; \
	else echo "bench: step-ca build failed" >&2; fail=1; fi; \
	run ./policy -bench '^BenchmarkCompile$$' -benchtime 5x; \
	run ./netagent -bench '^BenchmarkFirewallApply$$' -benchtime 10x; \
	run ./netagent -bench '^BenchmarkFirewallPacket$$' -benchtime 300x; \
	run ./netagent -bench '^BenchmarkPeerChange$$' -benchtime 20x; \
	run ./controller -bench '^BenchmarkViewChange$$' -benchtime 10000x -count 3; \
	run ./controller -bench '^BenchmarkRaftWrite$$' -benchtime 2000x -count 3; \
	run ./controller -bench '^BenchmarkRaftBatchedWrites$$' -benchtime 20000x -count 3; \
	run ./controller -bench '^BenchmarkCertArchive$$' -benchtime 50x; \
	uptime | tee -a $(BENCH_LOG); \
	$(MAKE) --no-print-directory bench-fanout || fail=1; \
	$(GO) run ./internal/benchjson -map $(BENCH_MAP) -out bench-results.json $(BENCH_LOG) $(FANOUT_LOG) || fail=1; \
	exit $$fail

# The controller fan-out harness (issue 4, internal/loadtest): a 3-node
# govnetd cluster on 127.0.0.11-13 and FANOUT_SIZES simulated gateways in
# worker processes, with real certificates and the real client. Each size's
# cluster and enrolled identities are kept in .bench-cache/ (git-ignored),
# so a rerun skips enrollment (remove the directory to start afresh).
# Prints the figures and merges them into bench-results.json;
# docs/performance.md, "Controller fan-out under load", explains them.
# Each round's time and CPU, the re-issue and the nodes' warnings (raft
# elections, step-downs) go to $(FANOUT_PROGRESS).
FANOUT_SIZES    ?= 1000,5000,20000
FANOUT_LOG      := $(BIN)/bench-fanout.log
FANOUT_PROGRESS := $(BIN)/bench-fanout-progress.log
bench-fanout: SHELL := /bin/bash
bench-fanout: build
	@$(GO) build -o $(BIN)/ ./internal/loadtest/cmd/govnet-load; \
	uptime | tee $(FANOUT_LOG); \
	$(BIN)/govnet-load -govnetd $(BIN)/govnetd -gateways $(FANOUT_SIZES) -cache-dir .bench-cache -progress $(FANOUT_PROGRESS) 2>&1 | tee -a $(FANOUT_LOG); \
	st=$${PIPESTATUS[0]}; \
	uptime | tee -a $(FANOUT_LOG); \
	grep -E '^(fanout\.|controller\.bytes_per_gateway |revoke\.enforced_p99_s |ca\.reissue_((p50_)?20000_s|(node|gateway)_cpu_us_20000) )' $(BENCH_MAP) >$(BIN)/fanout.map; \
	$(GO) run ./internal/benchjson -map $(BIN)/fanout.map -out bench-results.json $(FANOUT_LOG) || st=1; \
	exit $$st

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet $(PKGS)

# A 3-node controller cluster and four gateways in network namespaces; the lab stays up.
demo: deps build
	deploy/lab/lab.sh up

# Long runs, not part of make test: the cluster fault test (kill -9 of the
# leader under acknowledged writes, a full restart, a partitioned leader,
# backup and restore, with porcupine's linearizability check) and the
# end-to-end failover, five times each under the race detector; then the
# fan-out harness at 5,000 gateways for 20 policy rounds, its revocations
# and its network-wide re-issue (cluster kept in .bench-cache/), and a
# cluster outliving its nodes' first certificates (five-minute lifetime,
# about six minutes). About 10 minutes (24 November: fault tests 91 s,
# failover 81 s, harness 80 s).
e2e-long: build
	$(GO) test -race -count=5 -timeout 80m -run '^(TestClusterFaults|TestFailover)$$' ./controller ./e2e
	GOVNET_LONG=1 $(GO) test -count=1 -timeout 20m -run '^TestNodeCertsRenewInCluster$$' ./controller
	@$(GO) build -o $(BIN)/ ./internal/loadtest/cmd/govnet-load
	$(BIN)/govnet-load -govnetd $(BIN)/govnetd -gateways 5000 -rounds 20 -cache-dir .bench-cache

demo-down:
	deploy/lab/lab.sh down

clean: demo-down
	rm -rf $(BIN)

# Release builds and Debian packages, in dist/ (git-ignored).
#
# `make cross`: linux/amd64 and linux/arm64 into dist/linux_<arch>/. A
# command that links the PKCS#11 loader (github.com/miekg/pkcs11, cgo) is
# built with CGO_ENABLED=1, and for arm64 that needs a C cross compiler
# (deploy/scripts/deps-cross.sh installs it; `make test` never does). The
# others are built with CGO_ENABLED=0: static, no libc dependency.
# `go list -deps` decides, so a command that stops importing hsm/ becomes
# static without a Makefile change.
#
# `make package`: the three Debian packages for each of PKG_ARCHS (default:
# this machine's), built with nfpm v2.48.0 as a library (deploy/packaging,
# a module of its own). VERSION defaults to `git describe`: vX.Y.Z tags give
# X.Y.Z, an untagged tree 0.0.0~git.<commit>, with + for - and a +dirty
# suffix when the tree has uncommitted changes.
DIST       := dist
GIT_DESC   := $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
VERSION    ?= $(subst -,+,$(if $(filter v%,$(GIT_DESC)),$(patsubst v%,%,$(GIT_DESC)),0.0.0~git.$(GIT_DESC)))
HOST_ARCH  := $(shell $(GO) env GOARCH)
CROSS_ARCHS := amd64 arm64
PKG_ARCHS  ?= $(HOST_ARCH)
CC_amd64   := x86_64-linux-gnu-gcc
CC_arm64   := aarch64-linux-gnu-gcc
cc_for      = $(if $(filter $(1),$(HOST_ARCH)),gcc,$(CC_$(1)))
cgo_for     = $(shell $(GO) list -deps ./cmd/$(1) | grep -qx github.com/miekg/pkcs11 && echo 1 || echo 0)

# build-arch ARCH: the three binaries for linux/ARCH in dist/linux_ARCH/
# (recipe lines; the blank lines before endef separate expansions).
define build-cmd
GOOS=linux GOARCH=$(1) CGO_ENABLED=$(call cgo_for,$(2)) CC=$(call cc_for,$(1)) $(GO) build -trimpath -o $(DIST)/linux_$(1)/ ./cmd/$(2)

endef
define build-arch
mkdir -p $(DIST)/linux_$(1)
$(foreach c,$(CMDS),$(call build-cmd,$(1),$(c)))
endef

# pkg-arch ARCH: the three packages for linux/ARCH.
define pkg-arch
VERSION=$(VERSION) ARCH=$(1) BINDIR=$(DIST)/linux_$(1) COMPLETIONS=$(DIST)/completions $(BIN)/govnet-pkg --target $(DIST) deploy/packaging/govnetd.yaml deploy/packaging/govnet-agent.yaml deploy/packaging/govnetctl.yaml

endef

cross:
	@deploy/scripts/deps-cross.sh
	$(foreach a,$(CROSS_ARCHS),$(call build-arch,$(a)))
	file $(foreach a,$(CROSS_ARCHS),$(DIST)/linux_$(a)/*)

package:
	@$(if $(filter-out $(HOST_ARCH),$(PKG_ARCHS)),deploy/scripts/deps-cross.sh,true)
	$(foreach a,$(sort $(HOST_ARCH) $(PKG_ARCHS)),$(call build-arch,$(a)))
	@mkdir -p $(BIN) $(DIST)/completions
	$(GO) -C deploy/packaging build -o $(CURDIR)/$(BIN)/govnet-pkg .
	$(DIST)/linux_$(HOST_ARCH)/govnetctl completion bash >$(DIST)/completions/govnetctl.bash
	$(DIST)/linux_$(HOST_ARCH)/govnetctl completion zsh >$(DIST)/completions/_govnetctl
	$(foreach a,$(PKG_ARCHS),$(call pkg-arch,$(a)))
	@ls -l $(DIST)/*_$(VERSION)-1_*.deb
