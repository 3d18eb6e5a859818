# Test entry points; .ci/run runs `make test`.
.PHONY: build test unit fuzz fuzz-short e2e lint

build:
	go build -o kpki ./cmd/kpki

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
	./internal/rotation:FuzzValidateStaged
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
