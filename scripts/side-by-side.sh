#!/usr/bin/env bash
# Run two lanes of test steps at once on this 2-core machine, and fail when either fails:
#   scripts/side-by-side.sh LOG 'SIDE COMMAND' 'MAIN COMMAND'
# The main lane (the functional suites, which wait on PostgreSQL, S3 and injected stalls much of the time) prints
# as it goes; the side lane (steps that need no test bed: ansible-test, ansible-lint, Molecule's base images)
# writes to LOG, printed whole when both lanes are done, so the two outputs never interleave. The exit status is
# the main lane's when it failed, else the side lane's.
set -uo pipefail
log=$1 side=$2 main=$3
mkdir -p "$(dirname "$log")"
started=$(date +%s)
echo "+ side lane (output: $log, printed when done): $side"
bash -c "$side" >"$log" 2>&1 </dev/null &
side_pid=$!
# Stop the side lane if this script is interrupted, so no step outlives the run.
trap 'pkill -TERM -P $side_pid 2>/dev/null; kill $side_pid 2>/dev/null' INT TERM
bash -c "$main"
main_status=$?
wait "$side_pid"
side_status=$?
trap - INT TERM
echo "+ side lane output ($side, exit $side_status, both lanes done in $(( $(date +%s) - started ))s):"
cat "$log"
if [ "$main_status" -ne 0 ]; then
    echo "side-by-side: the main lane failed (exit $main_status): $main" >&2
    [ "$side_status" -ne 0 ] && echo "side-by-side: the side lane failed too (exit $side_status): $side" >&2
    exit "$main_status"
fi
if [ "$side_status" -ne 0 ]; then
    echo "side-by-side: the side lane failed (exit $side_status): $side" >&2
    exit "$side_status"
fi
