# kptune: see README.md. `make demo` and `make test` are the two commands a newcomer needs.
SHELL := /bin/bash
# A recipe piped into tee fails when the command before the pipe does.
.SHELLFLAGS := -o pipefail -c
GO ?= go
# The kube-proxy builds `make test` runs on: the last release of the old runner and the newest one.
TEST_BUILDS ?= v1.33.5 v1.37.2
GOTEST_FLAGS ?= -count=1 -timeout 40m

.PHONY: all build image e2e bench-e2e fuzz soak bench-smoke bench-churn bench-trace bench-scale bench-fullsync bench-report bench-kptune bench-stop setup prebuild test test-unit test-matrix bench demo cluster-up cluster-down clean

all: build

build:
	$(GO) build -o bin/kptune ./cmd/kptune

# The agent's image: the static binary alone (Dockerfile, FROM scratch), built by Docker where its
# daemon runs, else by buildah (no daemon), which also writes it as bin/kptune-image.tar, a docker-archive
# that `docker load`, `ctr images import` and `kind load image-archive` read.
image: setup
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o bin/kptune-static ./cmd/kptune
	if command -v docker >/dev/null && docker info >/dev/null 2>&1; then docker build -t kptune:latest .; \
	else buildah bud -q -f Dockerfile -t kptune:latest . && rm -f bin/kptune-image.tar && \
		buildah push -q kptune:latest docker-archive:bin/kptune-image.tar:kptune:latest && ls -l bin/kptune-image.tar; fi

setup:
	./test/setup.sh

# Builds (or finds in the cache) everything the tests start, so the slow cold builds show their
# progress here rather than inside a test's timeout.
prebuild: setup
	./test/cluster/build.sh >/dev/null
	./test/helm/build.sh >/dev/null
	for v in $(TEST_BUILDS); do ./test/kubeproxy/build.sh $$v >/dev/null; done
	for f in "" --pie --cgo --debug "--cgo --debug" "--pie --debug"; do \
		./test/kubeproxy/build.sh v1.33.5 $$f --fixture asyncrunner >/dev/null || exit 1; done
	for f in "" --debug; do ./test/kubeproxy/build.sh v1.37.2 $$f --fixture proxyrunner >/dev/null || exit 1; done

test: prebuild
	$(GO) vet ./...
	$(GO) test $(GOTEST_FLAGS) ./...

# The churn bench's smoke run: steady churn on kube-proxy at static periods of 1s, 2s and 5s,
# asserting the physics (syncs fall as the period rises, within the token bucket; every change lands).
bench-smoke: prebuild
	KPTUNE_CHURN_RECORD=1 $(GO) test -count=1 -timeout 20m -tags churn -run 'TestSmoke|TestRetuneUnderChurn' -v ./test/churn

# The churn bench (test/churn): every workload on kube-proxy at static periods, retuned live by kptune
# set, and under the adaptive agent, in iptables and nftables mode, at CHURN_SCALE Services x
# endpoints. The report and plots go to bench/churn/. Long: at
# 5000x10 about 100 minutes a mode. CHURN_MODES, CHURN_RUN (the tests), and KPTUNE_CHURN_SETUPS,
# _WORKLOADS, _WINDOWS, _WINDOW narrow it; a run replaces the results of what it ran and keeps the
# others. Its log goes to bench/results/churn/CHURN_LOG.log.
CHURN_SCALE ?= 5000x10
CHURN_MODES ?= iptables,nftables
CHURN_RUN ?= TestBench
comma := ,
CHURN_LOG ?= $(CHURN_SCALE)-$(subst $(comma),-,$(CHURN_MODES))
bench-churn: prebuild
	mkdir -p bench/results/churn
	KPTUNE_CHURN_RECORD=1 KPTUNE_CHURN_SCALE=$(CHURN_SCALE) KPTUNE_CHURN_MODES=$(CHURN_MODES) $(GO) test -count=1 -timeout 600m -tags churn -run '$(CHURN_RUN)' -v ./test/churn 2>&1 | tee bench/results/churn/$(CHURN_LOG).log; \
	  status=$$?; $(GO) run ./test/cmd/benchplot -in bench/results/churn/$(CHURN_SCALE) -out bench/churn$(if $(filter 5000x10,$(CHURN_SCALE)),,/$(CHURN_SCALE)) && exit $$status

# The trace bench (test/churn TestTrace): a cluster's day (quiet, a rolling update of several
# Deployments, steady churn, a burst of scale-downs, quiet) replayed for every setup, each run on a
# fresh kube-proxy, the setups in an order drawn for each repetition; TRACE_REPS repetitions from
# TRACE_FIRST_REP. Each run is appended to TRACE_OUT as it ends, so that repetitions split over
# several sessions merge. About 6 minutes a run at 5000x10 with the default 30s unit (eleven setups:
# over an hour a repetition and mode). Then its report is made again, also after a failed check (make
# still fails), from every record kept.
TRACE_SCALE ?= 5000x10
TRACE_MODES ?= iptables
TRACE_REPS ?= 1
TRACE_FIRST_REP ?= 1
TRACE_SETUPS ?= 100ms,1s,2s,5s,10s,15s,20s,30s,live,adaptive,objective
TRACE_UNIT ?= 30s
TRACE_OUT ?= bench/results/trace/$(TRACE_SCALE).jsonl
bench-trace: prebuild
	mkdir -p bench/results/trace
	{ echo "# make bench-trace at $$(git rev-parse --short HEAD), $$(date -u +%FT%TZ), kernel $$(uname -r): TRACE_SCALE=$(TRACE_SCALE) TRACE_MODES=$(TRACE_MODES) TRACE_REPS=$(TRACE_REPS) TRACE_FIRST_REP=$(TRACE_FIRST_REP) TRACE_SETUPS=$(TRACE_SETUPS) TRACE_UNIT=$(TRACE_UNIT) TRACE_OUT=$(TRACE_OUT)"; \
	  KPTUNE_TRACE_SCALE=$(TRACE_SCALE) KPTUNE_TRACE_MODES=$(TRACE_MODES) KPTUNE_TRACE_REPS=$(TRACE_REPS) KPTUNE_TRACE_FIRST_REP=$(TRACE_FIRST_REP) \
	  KPTUNE_TRACE_SETUPS=$(TRACE_SETUPS) KPTUNE_TRACE_UNIT=$(TRACE_UNIT) KPTUNE_TRACE_OUT=$(abspath $(TRACE_OUT)) \
	  $(GO) test -count=1 -timeout 600m -tags churn -run TestTrace -v ./test/churn 2>&1; } | tee -a $(TRACE_OUT:.jsonl=.log); \
	  status=$$?; $(GO) run ./test/cmd/tracereport -in bench/results/trace -out bench/trace && exit $$status

# The scale bench (test/churn TestScale): restart against kptune set as the cluster grows. At SCALE
# Services x endpoints, one kube-proxy a mode under 10 changes a second goes through SCALE_PAIRS pairs
# of changes between 1s and 5s, each way up and down in turn, and kptune inspect reads it with each
# locator after each pair. Records are appended to bench/results/scale/SCALE.jsonl as they are made,
# so that scales and modes run in several sessions merge. At 10000x10 about 25 minutes a mode, after 2
# to 3.5 to load. SCALE_SYNC_PERIOD is kube-proxy's syncPeriod: at 10000x10 in nftables mode a full sync
# takes 35-55 s, and under the default 30s kptune's /healthz rail may refuse the raise to 5s.
# Its report is made again after the run, also when a check failed (make still fails).
SCALE ?= 10000x10
SCALE_MODES ?= iptables,nftables
SCALE_PAIRS ?= 10
SCALE_SYNC_PERIOD ?= 30s
bench-scale: prebuild
	mkdir -p bench/results/scale
	{ echo "# make bench-scale at $$(git rev-parse --short HEAD), $$(date -u +%FT%TZ), kernel $$(uname -r): SCALE=$(SCALE) SCALE_MODES=$(SCALE_MODES) SCALE_PAIRS=$(SCALE_PAIRS) SCALE_SYNC_PERIOD=$(SCALE_SYNC_PERIOD)"; \
	  KPTUNE_SCALE=$(SCALE) KPTUNE_SCALE_MODES=$(SCALE_MODES) KPTUNE_SCALE_PAIRS=$(SCALE_PAIRS) KPTUNE_SCALE_SYNC_PERIOD=$(SCALE_SYNC_PERIOD) \
	  $(GO) test -count=1 -timeout 300m -tags churn -run TestScale -v ./test/churn 2>&1; } | tee -a bench/results/scale/$(SCALE).log; \
	  status=$$?; $(GO) run ./test/cmd/scalereport -in bench/results/scale -out bench/scale && exit $$status

# The full-sync bench (test/churn TestFullSync): how long kube-proxy's full syncs take at FULLSYNC_SCALE,
# its first after a start and later ones forced by a change of its Node's labels, at 1s and at 20s, and
# whether /healthz turned 503 across them; a fresh kube-proxy a mode a repetition. About 5 minutes a
# repetition in nftables mode at 5000x10, 2 in iptables mode.
FULLSYNC_SCALE ?= 5000x10
FULLSYNC_MODES ?= iptables,nftables
FULLSYNC_REPS ?= 5
FULLSYNC_FIRST_REP ?= 1
bench-fullsync: prebuild
	mkdir -p bench/results/fullsync
	{ echo "# make bench-fullsync at $$(git rev-parse --short HEAD), $$(date -u +%FT%TZ), kernel $$(uname -r): FULLSYNC_SCALE=$(FULLSYNC_SCALE) FULLSYNC_MODES=$(FULLSYNC_MODES) FULLSYNC_REPS=$(FULLSYNC_REPS) FULLSYNC_FIRST_REP=$(FULLSYNC_FIRST_REP)"; \
	  KPTUNE_FULLSYNC_SCALE=$(FULLSYNC_SCALE) KPTUNE_FULLSYNC_MODES=$(FULLSYNC_MODES) KPTUNE_FULLSYNC_REPS=$(FULLSYNC_REPS) KPTUNE_FULLSYNC_FIRST_REP=$(FULLSYNC_FIRST_REP) \
	  $(GO) test -count=1 -timeout 120m -tags churn -run TestFullSync -v ./test/churn 2>&1; } | tee -a bench/results/fullsync/$(FULLSYNC_SCALE).log; \
	  status=$$?; $(GO) run ./test/cmd/fullsyncreport -in bench/results/fullsync -out bench/fullsync && exit $$status

# Every table and plot of the bench reports, made again from bench/results alone.
bench-report:
	$(GO) run ./test/cmd/benchplot -in bench/results/churn/5000x10 -out bench/churn
	$(GO) run ./test/cmd/benchplot -in bench/results/churn/1000x10 -out bench/churn/1000x10
	$(GO) run ./test/cmd/tracereport -in bench/results/trace -out bench/trace
	$(GO) run ./test/cmd/scalereport -in bench/results/scale -out bench/scale
	$(GO) run ./test/cmd/fullsyncreport -in bench/results/fullsync -out bench/fullsync

# 1000 set/reset cycles on a real kube-proxy under churn, its rules compared with an untouched one's
# (make test runs 40).
soak: prebuild
	KPTUNE_SOAK_CYCLES=$${SOAK_CYCLES:-1000} $(GO) test -count=1 -timeout 60m -run TestSoak -v ./internal/tune | tee bench/results/soak.txt

# Every fuzz target for FUZZTIME each (default 60s); the results go to bench/results/fuzz.txt.
fuzz: prebuild
	FUZZTIME=$${FUZZTIME:-60s} ./test/fuzz.sh | tee bench/results/fuzz.txt

# kptune as users deploy it (test/e2e): a one-node cluster with a kubelet on containerd, kube-proxy as
# kubeadm's DaemonSet and the agent installed by its Helm chart; then its faults. About 10 minutes
# once built. The figures it measures go to bench/results/e2e.txt.
e2e: prebuild
	./test/setup.sh --e2e
	./test/kubeproxy/build.sh v1.34.4 --cmd kubelet >/dev/null
	for c in kube-controller-manager kube-scheduler; do ./test/kubeproxy/build.sh v1.37.2 --cmd $$c >/dev/null || exit 1; done
	{ echo "# make e2e at $$(git rev-parse --short HEAD 2>/dev/null), $$(date -u +%FT%TZ)"; \
	  $(GO) test -count=1 -timeout 40m -tags e2e -run TestE2E -v ./test/e2e 2>&1; } | tee bench/results/e2e.txt

# The deployed agent beside kube-proxy at 5000 Services x 10 endpoints under 10 changes/s: helm install
# to the first verified write, and the agent's CPU and memory read from its container's cgroup, five
# fresh pods of each (about 35 minutes). KPTUNE_E2E_SCALE, _REPS, _WINDOW, _RATE narrow it.
bench-e2e: prebuild
	./test/setup.sh --e2e
	./test/kubeproxy/build.sh v1.34.4 --cmd kubelet >/dev/null
	for c in kube-controller-manager kube-scheduler; do ./test/kubeproxy/build.sh v1.37.2 --cmd $$c >/dev/null || exit 1; done
	{ echo "# make bench-e2e at $$(git rev-parse --short HEAD 2>/dev/null), $$(date -u +%FT%TZ), KPTUNE_E2E_SCALE=$${KPTUNE_E2E_SCALE:-5000x10} KPTUNE_E2E_REPS=$${KPTUNE_E2E_REPS:-5} KPTUNE_E2E_WINDOW=$${KPTUNE_E2E_WINDOW:-90s} KPTUNE_E2E_RATE=$${KPTUNE_E2E_RATE:-10}"; \
	  $(GO) test -count=1 -timeout 120m -tags e2e -run TestBenchDeploy -v ./test/e2e 2>&1; } | tee bench/results/e2e-bench.txt

# Every test that needs neither root nor a build (go test -short: the others skip, naming why;
# the test bed refuses to build under -short, so a test that would build fails rather than wait).
test-unit:
	$(GO) test -short -count=1 ./...

# The whole version and build matrix (long: about 7 minutes a cold build).
test-matrix:
	./test/setup.sh --matrix
	$(GO) test -count=1 -timeout 300m -tags matrix -run TestMatrix -v ./internal/target/

# make bench: kptune's own benchmarks, then the churn bench.
# kptune's benchmarks on real kube-proxy at 5k Services x 10 endpoints (KPTUNE_BENCH_SERVICES, _ENDPOINTS):
# inspect's wall time and peak RSS; the memory scan against the uprobe locator; a retune by kptune
# against perf probe + gdb, side by side. Then what an attached uprobe costs per call, and the agent's
# own CPU and memory beside a kube-proxy under churn.
bench: bench-kptune bench-churn

bench-kptune: prebuild
	./test/setup.sh --bench
	KPTUNE_BENCH_RECORD=1 $(GO) test -run '^$$' -bench . -benchtime $${BENCHTIME:-10x} -timeout 90m ./test/bench | tee bench/results/bench.txt
	$(GO) test -run '^$$' -bench . -benchtime 200000x ./internal/probe | tee bench/results/probe.txt
	$(MAKE) bench-stop
	$(GO) test -run '^$$' -bench . -benchtime 3x -timeout 20m ./internal/agent | tee bench/results/agent.txt

# The stop's length: four setups interleaved stop by stop, five runs of a fresh fixture each, on an
# idle machine and with two busy loops (BenchmarkStop).
bench-stop: prebuild
	{ echo "# idle: go test -run '^$$' -bench BenchmarkStop -benchtime 2000x -count 5 ./internal/freeze" && \
	  $(GO) test -run '^$$' -bench BenchmarkStop -benchtime 2000x -count 5 ./internal/freeze && \
	  echo "# loaded: KPTUNE_BENCH_LOAD=2, the same" && \
	  KPTUNE_BENCH_LOAD=2 $(GO) test -run '^$$' -bench BenchmarkStop -benchtime 2000x -count 5 ./internal/freeze; } | tee bench/results/stop.txt

demo: setup
	$(GO) run ./test/cmd/testbed demo

cluster-up: setup
	./test/cluster/up.sh

cluster-down:
	./test/cluster/down.sh

clean:
	rm -rf bin
