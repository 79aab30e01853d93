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

.PHONY: all deps build test race unit fuzz bench lint demo demo-down e2e-long clean

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
	$(GO) test ./policy -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME)
	$(GO) test ./ca -run '^$$' -fuzz FuzzParseCSR -fuzztime $(FUZZTIME)
	$(GO) test ./controller -run '^$$' -fuzz FuzzAPIRequest -fuzztime $(FUZZTIME)

bench: deps build
	$(GO) test -run '^$$' -bench . -benchtime 2s ./hsm ./policy ./netagent

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet $(PKGS)

# A controller and four gateways in network namespaces; the lab stays up.
demo: deps build
	deploy/lab/lab.sh up

demo-down:
	deploy/lab/lab.sh down

clean: demo-down
	rm -rf $(BIN)
