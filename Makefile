# Test entry points; .ci/run runs `make test`.
.PHONY: build install test unit fuzz fuzz-short e2e lint crash bench storm

build:
	go build -o kpki ./cmd/kpki

# The binary and the systemd units where the units expect them (RKE2's places):
# /usr/local/bin/kpki, /usr/local/lib/systemd/system/kpki{,-agent}.service and the example
# env files beside them, which are kept when present (they may hold a token). BIN is built
# when missing; DESTDIR stages the tree elsewhere. Then: systemctl daemon-reload.
BIN ?= kpki
UNITDIR = $(DESTDIR)/usr/local/lib/systemd/system
install:
	test -x $(BIN) || go build -o $(BIN) ./cmd/kpki
	install -D -m 0755 $(BIN) $(DESTDIR)/usr/local/bin/kpki
	install -D -m 0644 dist/systemd/kpki.service $(UNITDIR)/kpki.service
	install -D -m 0644 dist/systemd/kpki-agent.service $(UNITDIR)/kpki-agent.service
	install -D -m 0644 docs/operations.md $(DESTDIR)/usr/local/share/doc/kpki/operations.md
	for f in kpki.env kpki-agent.env; do \
	  test -e $(UNITDIR)/$$f || install -m 0600 dist/systemd/$$f $(UNITDIR)/$$f || exit 1; \
	done

# Everything: unit tests and a short run of each fuzz target, end-to-end tests of the
# module, then the Kubernetes suite.
test: lint unit fuzz-short e2e

lint:
	test -z "$$(gofmt -l $$(git ls-files '*.go'))"
	go vet ./...
	go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
	cd test/kube && go vet ./...

unit:
	go test -timeout 40m ./...

# Go fuzz targets, as package:target; test/fuzz.sh runs them one after the other.
FUZZ_TARGETS = \
	./internal/token:FuzzParse \
	./internal/bootstrap:FuzzDecrypt \
	./internal/bootstrap:FuzzEncryptDecrypt \
	./internal/bootstrap:FuzzParseRecord \
	./internal/pki:FuzzParseCerts \
	./internal/pki:FuzzParseKeys \
	./internal/pki:FuzzFindRoot \
	./internal/cli:FuzzConfig \
	./internal/rotation:FuzzValidateStaged \
	./internal/trust:FuzzFollow
FUZZTIME ?= 10m
FUZZTIME_SHORT ?= 6s
FUZZPARALLEL ?= 1

# Each fuzz target for FUZZTIME (docs/testing.md gives the figures of such a run).
fuzz:
	FUZZPARALLEL=$(FUZZPARALLEL) test/fuzz.sh $(FUZZTIME) $(FUZZ_TARGETS)

# Each fuzz target briefly, as CI runs them.
fuzz-short:
	FUZZPARALLEL=$(FUZZPARALLEL) test/fuzz.sh $(FUZZTIME_SHORT) $(FUZZ_TARGETS)

# Real kube-apiserver and kube-controller-manager on kpki's PKI. The components are
# built from the Go module proxy; the binaries are kept in the user cache dir and the
# Go build cache, so only the first run pays the cold build (about 6 minutes).
e2e:
	cd test/kube && go test -count=1 -timeout 40m -v ./...

# Crash injection: kpki killed with SIGKILL at random instants of start-up, renewal, rotate,
# rotate-ca, token rotate, agent join and agent renewal, then restarted and checked
# (test/e2e/crash_test.go). The unit run takes a small sample; this takes CRASHES of them.
# KPKI_CRASH_SEED=<n> repeats a run.
CRASHES ?= 210
crash:
	@log=$$(mktemp /tmp/kpki-crash.XXXXXX); echo "full log: $$log"; \
	KPKI_CRASH_N=$(CRASHES) go test -count=1 -timeout 90m -run '^TestCrash$$' -v ./test/e2e/ >$$log 2>&1; rc=$$?; \
	grep -E 'crash injection|crashes injected|^ *--- |^(FAIL|ok)' $$log; exit $$rc

# Signing against its peers in one invocation (docs/performance.md): the in-process limit
# (CSR check + sign on every CPU), cfssl serve (Debian golang-cfssl) signing the same
# P-256 CSRs, and a kpki server on a throw-away data dir, renew and join with and without
# keep-alive, each as a ratio to cfssl and to the limit. BENCH_FLAGS is passed on, e.g.
# BENCH_FLAGS='--requests 20000 --concurrency 16'.
BENCH_FLAGS ?=
bench:
	@bin=$$(mktemp -d /tmp/kpki-bench-bin.XXXXXX); \
	go build -o $$bin/kpki ./cmd/kpki && go build -o $$bin/kpki-bench ./cmd/kpki-bench && \
	$$bin/kpki-bench bench --kpki $$bin/kpki $(BENCH_FLAGS); rc=$$?; rm -rf $$bin; exit $$rc

# A join storm of whole agents (docs/performance.md): for each size of STORM_AGENTS, three
# servers on 127.0.0.1/.2/.3 (embedded etcd cluster), the first killed when a third of the
# agents have joined; zero failed joins is required. Joins/s, p50/p99, total time, and the
# survivors' RSS and etcd db size per joined node.
STORM_AGENTS ?= 500,1000,2000,5000
STORM_FLAGS ?=
storm:
	@bin=$$(mktemp -d /tmp/kpki-storm-bin.XXXXXX); \
	go build -o $$bin/kpki ./cmd/kpki && go build -o $$bin/kpki-bench ./cmd/kpki-bench && \
	$$bin/kpki-bench storm --kpki $$bin/kpki --agents $(STORM_AGENTS) $(STORM_FLAGS); rc=$$?; rm -rf $$bin; exit $$rc
