# containerd-shim-rustrunc-v2
#   make demo   build, start a private containerd with this runtime registered, run a container through it
#   make test   unit + integration tests (installs containerd, runc, crun, busybox-static first)
#   make test-cgroup2   the cgroup tests in a cgroup v2 + systemd guest (qemu)

CARGO ?= cargo
PREFIX ?= /usr/local
BIN := target/release/containerd-shim-rustrunc-v2
HOST ?= $(shell rustc -vV | sed -n 's/^host: //p')

.PHONY: all build deb deps test-deps demo test test-tmpfs-run test-cgroup2 unit integration lint install clean bench stress fuzz

all: build

# Statically linked glibc: no shared libc mapped into every shim, about 1 MiB less RSS each. And not
# position-independent: a static-pie applies ~2,900 relocations at every start (the `start` action and
# the daemon), which dirties their pages: non-PIE is ~40 KiB less RSS per shim and ~0.5 ms less CPU
# per container; the price is no ASLR for the shim's own code (stack, heap and mmaps still are).
# --target keeps the flags off build scripts and proc-macros. The result is copied to $(BIN).
build:
	RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" $(CARGO) build --release --target $(HOST)
	mkdir -p target/release
	cp --remove-destination target/$(HOST)/release/containerd-shim-rustrunc-v2 $(BIN)

# A Debian package of the static binary (target/deb/*.deb; `apt install ./target/deb/<file>.deb`), its
# contents checked with dpkg-deb -c.
deb: build
	bash scripts/deb.sh

deps:
	bash scripts/install-deps.sh

# Also Debian trixie's and sid's containerd (1.7, 2.x), unpacked into target/containerd/ for tests/versions.rs.
test-deps: deps
	bash scripts/fetch-containerd.sh

demo: deps build
	bash scripts/demo.sh

# Lint first (fast), then every test. Integration tests need root; they print "skipped: ..." otherwise.
test: test-deps lint
	$(CARGO) test --all-targets -- --test-threads=2

# `make test` as on a standard Debian host, where /run is a tmpfs and /tmp is on disk: /run/containerd
# on a tmpfs of its own, in a private mount namespace (nothing outside sees it). Catches tests that
# assume two paths share a filesystem (a hard link or rename from /run/containerd/s into /tmp: EXDEV).
test-tmpfs-run:
	mkdir -p /run/containerd
	unshare -m sh -c 'mount --make-rprivate / && mount -t tmpfs tmpfs /run/containerd && $(MAKE) test'

# tests/cgroup2.rs and tests/cgroups.rs as root in a cgroup v2 + systemd guest (qemu, TCG unless a usable
# KVM). The first run builds the guest image into target/vm/ (~1 min, Debian's apt only).
test-cgroup2: deps
	bash scripts/vm/test-cgroup2.sh

unit:
	$(CARGO) test --lib

integration: test-deps
	$(CARGO) test --tests -- --test-threads=2

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/containerd-shim-rustrunc-v2

clean:
	$(CARGO) clean

# Benchmark against Debian's Go shim on one private containerd (ratios; `BENCH_ARGS=--quick` for < 1 min).
bench: deps build
	bash bench/run.sh $(BENCH_ARGS)

# The long robustness tests (1,000 lifecycles and execs, 20 x 16 MiB, races, faults); CI runs them too.
stress: deps
	bash scripts/stress.sh

# The decoders under cargo-fuzz, FUZZ_SECONDS each (installs cargo-fuzz from crates.io if missing).
FUZZ_SECONDS ?= 30
fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)
