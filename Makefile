# Portcullis. `make run` serves the quickstart with no cluster; `make test`
# runs every test. Targets install what they need, idempotently.

SHELL := /bin/bash
# One target dir shared by every checkout on the machine: a cold build of this
# workspace takes minutes on 2 cores, a warm one seconds.
export CARGO_TARGET_DIR ?= /var/tmp/portcullis-target
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/release/portcullis

.PHONY: run build test lint bench e2e deps-test deps-bench crds manifests packaging fuzz

build:
	$(CARGO) build --release -p portcullis

# Serves examples/quickstart on 127.0.0.1:8080, with the echo backend it
# routes to on 127.0.0.1:3000 and the admin listener on 127.0.0.1:9901.
run: build
	@$(BIN) echo --listen 127.0.0.1:3000 & echo_pid=$$!; \
	trap 'kill $$echo_pid 2>/dev/null' EXIT INT TERM; \
	$(BIN) run --config-dir examples/quickstart --bind 127.0.0.1 --admin 127.0.0.1:9901

# Test prerequisites: tests generate their own certificates and start their
# own servers; the rate-limit tests start a real redis-server.
deps-test:
	@bash scripts/install-deps.sh test

test: deps-test
	$(CARGO) test --workspace --all-targets

# Every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 30) each;
# installs cargo-fuzz and a C++ compiler once. A crash fails the target.
fuzz:
	bash scripts/fuzz.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) run -q -p portcullis -- crds --check crds
	bash scripts/check-packaging.sh

# Regenerates crds/ from the Rust types (crates/api). `make lint` and
# `make test` fail when the checked-in YAML differs.
crds:
	$(CARGO) run -q -p portcullis -- crds --out-dir crds

# Regenerates what the packaging derives: the chart's CRDs and RBAC rules
# (from crds/ and deploy/rbac) and deploy/install (from the chart).
manifests: crds
	bash scripts/check-packaging.sh --update

# helm lint + helm template + derived files up to date (helm is built from
# its Go module, once, into a cache).
packaging:
	bash scripts/check-packaging.sh

deps-bench:
	@bash scripts/install-deps.sh bench

bench: deps-bench build
	$(CARGO) bench -p portcullis-tests
	bash bench/load.sh
	bash bench/churn.sh
	bash bench/ratelimit.sh
	bash bench/auth.sh
	bash bench/cache.sh

# Real kube-apiserver + etcd (built from Go modules, cached), pods as local
# processes; runs e2e/tests/*.sh. Needs root. The proxy and controller pods
# run the release binary.
e2e: build
	$(MAKE) -C e2e e2e
