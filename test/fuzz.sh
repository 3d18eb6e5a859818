#!/usr/bin/env bash
# Runs Go fuzz targets one after the other, each for the same duration.
#
#   test/fuzz.sh DURATION PKG:TARGET...      e.g. test/fuzz.sh 10s ./internal/token:FuzzParse
#
# FUZZPARALLEL sets -parallel (default 1). A target fails when go test fails, except
# for the bare "context deadline exceeded" that the Go fuzzing coordinator can report
# at the end of -fuzztime with no failing input (golang/go#75804): that run is counted
# as passed, with a note. A real failure writes its input to
# PKG/testdata/fuzz/TARGET/, which becomes a regression test of `go test`.
# Each run ends with one summary line: elapsed time, execs, new interesting inputs.
set -uo pipefail
cd "$(dirname "$0")/.."

duration=$1
shift
parallel=${FUZZPARALLEL:-1}
failed=()
summary=()
for spec in "$@"; do
  pkg=${spec%%:*}
  target=${spec##*:}
  corpus="$pkg/testdata/fuzz/$target"
  before=$(ls "$corpus" 2>/dev/null | sort)
  log=$(mktemp)
  echo "== $target ($pkg, $duration)"
  go test -run '^$' -fuzz "^${target}\$" -fuzztime "$duration" -parallel "$parallel" "$pkg" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  after=$(ls "$corpus" 2>/dev/null | sort)
  last=$(grep '^fuzz: elapsed: ' "$log" | grep -v 'gathering baseline' | tail -n 1)
  [ -n "$last" ] || last="$(grep '^fuzz: elapsed: ' "$log" | tail -n 1) (the whole run went to the corpus already found)"
  status=ok
  if [ "$rc" -ne 0 ]; then
    if [ "$before" = "$after" ] && grep -q '^    context deadline exceeded$' "$log" && ! grep -q 'Failing input written to' "$log"; then
      status="ok (end-of-run deadline report of the Go fuzz coordinator, no failing input)"
    else
      status=FAILED
      failed+=("$target")
    fi
  fi
  rm -f "$log"
  summary+=("$target: $status; ${last#fuzz: }")
done

echo "== fuzz summary ($duration per target, -parallel $parallel)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
