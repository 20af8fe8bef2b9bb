#!/usr/bin/env bash
# Run two lanes of test steps at once on this 2-core machine, and fail when either fails:
#   scripts/side-by-side.sh LOG 'SIDE COMMAND' 'MAIN COMMAND'
# The main lane (the functional suites, which wait on PostgreSQL, S3 and injected stalls much of the time) prints
# as it goes, and is kept in LOG's directory as main-lane.log; the side lane (steps that need no test bed:
# ansible-test, ansible-lint, Molecule's base images) writes to LOG, printed whole when both lanes are done, so the
# two outputs never interleave. The exit status is the main lane's when it failed, else the side lane's.
# When a lane fails, the last lines printed say which step failed and why (the failed make target, pytest's FAILED
# and ERROR lines, Ansible's fatal lines, Molecule's failed actions): a CI that keeps only the end of the output
# still shows them.
set -uo pipefail
log=$1 side=$2 main=$3
main_log="$(dirname "$log")/main-lane.log"
mkdir -p "$(dirname "$log")"
started=$(date +%s)
echo "+ side lane (output: $log, printed when done): $side"
bash -c "$side" >"$log" 2>&1 </dev/null &
side_pid=$!
# Stop the side lane if this script is interrupted, so no step outlives the run.
trap 'pkill -TERM -P $side_pid 2>/dev/null; kill $side_pid 2>/dev/null' INT TERM
bash -c "$main" 2>&1 | tee "$main_log"
main_status=${PIPESTATUS[0]}
wait "$side_pid"
side_status=$?
trap - INT TERM
echo "+ side lane output ($side, exit $side_status, both lanes done in $(( $(date +%s) - started ))s):"
cat "$log"

# why NAME LOG: the lines of LOG that say what failed, at most 20, each cut to 400 characters (colours and the
# frame Molecule draws around a command's output taken off first).
why() {
    echo "side-by-side: why the $1 lane failed (whole output: $2):" >&2
    sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^ *│ \{0,1\}//' "$2" \
        | grep -E '^(FAILED|ERROR) |^fatal: |Executed: Failed|^make(\[[0-9]+\])?: \*\*\*|^[=]* ?[0-9]+ (failed|errors?)\b.* in [0-9.]+s' \
        | tail -n 20 | cut -c1-400 | sed 's/^/  /' >&2
}

if [ "$main_status" -ne 0 ]; then
    [ "$side_status" -ne 0 ] && why side "$log"
    why main "$main_log"
    [ "$side_status" -ne 0 ] && echo "side-by-side: the side lane failed too (exit $side_status): $side" >&2
    echo "side-by-side: the main lane failed (exit $main_status): $main" >&2
    exit "$main_status"
fi
if [ "$side_status" -ne 0 ]; then
    why side "$log"
    echo "side-by-side: the side lane failed (exit $side_status): $side" >&2
    exit "$side_status"
fi
