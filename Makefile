# hv — make targets. `make demo` is the main job, `make test` the test suite.
GO        ?= go
BENCHTIME ?= 5000x
COUNT     ?= 10
BENCHSTAT  = $(shell $(GO) env GOPATH)/bin/benchstat

.PHONY: test fmt vet demo bench fuzz soak

EXAMPLES = examples/gorm examples/bun examples/golang-migrate examples/ent examples/sqlc
# INTEGRATIONS are nested modules too, so that the root module does not
# depend on OpenTelemetry or the Prometheus client.
INTEGRATIONS = otelhv promhv

## test: gofmt check, go vet, and every test under the race detector, also
## in the nested example and integration modules
test: fmt vet
	$(GO) test -race -count=1 ./...
	for d in $(EXAMPLES) $(INTEGRATIONS); do (cd $$d && $(GO) vet ./... && $(GO) test -race -count=1 ./...) || exit 1; done

fmt:
	@out=$$(gofmt -l . | grep -v '^testdata/'); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

## demo: two throwaway PostgreSQL servers (unless HV_DSN is set), shards, entities
demo:
	$(GO) run ./cmd/hv demo

$(BENCHSTAT):
	$(GO) install golang.org/x/perf/cmd/benchstat@latest

## bench: routed point SELECTs against direct pgx on the same two servers
## (fixed shard; random of 16 with 1 and 8 goroutines; random of 256),
## transaction mode against session mode (and, as the protocol's share,
## direct pgx in the two exec modes they use), the connection policy (1, 8 and
## 64 goroutines, 16 and 256 shards, 2 and 4 hosts; hv's rule via=hv, the
## former rule for a statement alone on its host via=hv-alone; hosts=4/shards=256/g=64
## is the throughput at scale), the ways of switching schema on one
## connection, and a fan-out against one shard. The test binary runs COUNT
## times, so that the sides alternate run by run (go test -count repeats one
## benchmark before the next); then benchstat prints medians and ratios side
## by side. With NET set (a one-way delay, e.g. NET=0.25ms) the same
## benchmarks run again, NETCOUNT times, with every connection, direct and
## hv alike, through a proxy on loopback that delays each direction
## (internal/netem); the loopback column comes first.
NET       ?=
NETCOUNT  ?= 3
NETBENCHTIME ?= 1000x
POLICYTIME ?= 10000x
NETPOLICYTIME ?= 2000x
BENCHES    = PointSelect|RandomShard|TxMode|SchemaSwitch|FanOut$$
bench: $(BENCHSTAT)
	$(GO) test -c -o hv.bench.test .
	set -e; for net in loopback $(NET); do \
		out=bench.$$net.out; rm -f $$out; count=$(COUNT); delay=; bt=$(BENCHTIME); pt=$(POLICYTIME); \
		if [ $$net != loopback ]; then count=$(NETCOUNT); delay=$$net; bt=$(NETBENCHTIME); pt=$(NETPOLICYTIME); fi; \
		for i in $$(seq $$count); do echo "$$net: run $$i of $$count"; \
			HV_BENCH_NET=$$delay ./hv.bench.test -test.run '^$$' -test.bench '$(BENCHES)' -test.benchmem \
				-test.benchtime $$bt -test.count 1 >> $$out; \
			HV_BENCH_NET=$$delay ./hv.bench.test -test.run '^$$' -test.bench 'Policy' -test.benchmem \
				-test.benchtime $$pt -test.count 1 >> $$out; done; \
	done
	rm -f hv.bench.test
	for net in loopback $(NET); do echo; echo "=== network: $$net (one-way delay)"; \
		$(BENCHSTAT) -filter '.name:/^(PointSelect|RandomShard)/' -col /via bench.$$net.out; \
		$(BENCHSTAT) -filter '.name:TxMode' -col /via bench.$$net.out; \
		$(BENCHSTAT) -filter '.name:Policy' -col /via bench.$$net.out; \
		$(BENCHSTAT) -filter '.name:SchemaSwitch' -col /via bench.$$net.out; \
		$(BENCHSTAT) -filter '.name:FanOut' -col /via bench.$$net.out; \
	done

FUZZTIME ?= 10s

## fuzz: each fuzz target for FUZZTIME (the DSN parser, the hstore parser,
## which also compares with PostgreSQL, and ParseKey)
fuzz:
	for f in FuzzParseConfig FuzzHstore FuzzParseKey; do \
		$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) . || exit 1; done

SOAK_N ?= 1000000

## soak: SOAK_N routed statements over 16 shards on two servers with random
## cancellations (about 2 min per million on 2 cores); not part of make test
soak:
	HV_SOAK=1 HV_SOAK_N=$(SOAK_N) $(GO) test -run '^TestSoak$$' -count=1 -v -timeout 30m .
