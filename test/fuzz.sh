#!/usr/bin/env bash
# Runs every fuzz target of kptune for a while each (FUZZTIME, default 60s) and prints one line a
# target: its time, its executions and its result. A failing input is kept by Go under the package's
# testdata/fuzz/ (commit it: it becomes a regression test) and fails the run.
#
#   FUZZTIME=10s test/fuzz.sh
#   FUZZTIME=10m FUZZFLAGS="-parallel 1" test/fuzz.sh   # one worker: leaves a core to other work
set -uo pipefail
cd "$(dirname "$0")/.."
time=${FUZZTIME:-60s}
targets=(
  internal/gobin:FuzzNew          # ELF, build information, pclntab, moduledata, type descriptors
  internal/locate:FuzzValidate    # the memory scan, the runner validator, the layout from values
  internal/locate:FuzzLayout      # layouts from crafted type descriptors, into the scan and the validator
  internal/kpmetrics:FuzzParse    # kube-proxy's metrics page
  internal/kpmetrics:FuzzConfig   # kube-proxy's /configz
  internal/state:FuzzLoad         # state records
  internal/agent:FuzzConfig       # the agent's configuration file
  internal/probe:FuzzDecode       # pt_regs snapshots
)
failed=0
printf '%-36s %8s %12s %s\n' TARGET TIME EXECS RESULT
fuzz() { go test "./$pkg" -run '^$' -fuzz "^$fn\$" -fuzztime "$time" ${FUZZFLAGS:-} 2>&1; }
for t in "${targets[@]}"; do
  pkg=${t%%:*} fn=${t##*:}
  out=$(fuzz)
  rc=$?
  # Go 1.26's fuzz coordinator can report the -fuzztime deadline itself as a failure (a race at the
  # deadline, golang/go#75804, fixed in Go 1.27): a bare "context deadline exceeded" with no
  # failing input written. Such a run is repeated once; any other failure, or a second one, fails.
  if [ $rc != 0 ] && printf '%s\n' "$out" | grep -q '^    context deadline exceeded$' &&
    ! printf '%s\n' "$out" | grep -q 'Failing input written'; then
    printf '%s: the fuzz deadline race (golang/go#75804), run again\n' "$t" >&2
    out=$(fuzz)
    rc=$?
  fi
  execs=$(printf '%s\n' "$out" | sed -n 's/.*execs: \([0-9]*\).*/\1/p' | tail -1)
  result=ok
  if [ $rc != 0 ]; then
    result=FAIL failed=1
    printf '%s\n' "$out" | tail -20 >&2
  fi
  printf '%-36s %8s %12s %s\n' "$t" "$time" "${execs:-?}" "$result"
done
exit $failed
