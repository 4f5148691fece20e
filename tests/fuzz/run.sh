#!/bin/sh
# Run one libFuzzer binary for a bounded time on a copy of its seed corpus (the source tree is never
# written). Usage: run.sh BINARY TARGET SECONDS SEED_DIR WORK_DIR [extra libFuzzer flags...]
#   SECONDS 0: only replay the seeds.
# Exit 0 when nothing was found; otherwise print the report and where the crashing input is, exit 1.
set -u
bin=$1 target=$2 secs=$3 seeds=$4 work=$5
shift 5

corpus=$work/corpus/$target
art=$work/artifacts/$target
log=$work/logs/$target.log
rm -rf "$corpus" "$art"
mkdir -p "$corpus" "$art" "$work/logs"
if [ -d "$seeds" ] && [ -n "$(ls -A "$seeds")" ]; then
    cp "$seeds"/* "$corpus"/
fi
nseeds=$(ls "$corpus" | wc -l)

if [ "$secs" -gt 0 ] 2>/dev/null; then
    limit="-max_total_time=$secs"
else
    limit="-runs=0"
fi

start=$(date +%s)
"$bin" $limit -max_len=65536 -timeout=10 -print_final_stats=1 -artifact_prefix="$art/" "$@" \
    "$corpus" >"$log" 2>&1
rc=$?
took=$(( $(date +%s) - start ))

execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
found=$(ls "$art" 2>/dev/null | sed "s|^|$art/|")

if [ "$rc" -eq 0 ] && [ -z "$found" ]; then
    echo "fuzz-$target: ok, ${execs:-?} runs in ${took}s, corpus $nseeds -> $(ls "$corpus" | wc -l) inputs" \
         "(log $log)"
    exit 0
fi

echo "fuzz-$target: FAILED (exit $rc after ${took}s); log: $log"
first=$(grep -n -m 1 -E '^==[0-9]+==|runtime error:|fuzz property violated|^ERROR: libFuzzer|^MS: ' "$log" \
        | cut -d: -f1)
if [ -n "$first" ]; then
    sed -n "${first},\$p" "$log" | head -n 80 | sed 's/^/    /'
else
    tail -n 40 "$log" | sed 's/^/    /'
fi
if [ -n "$found" ]; then
    for f in $found; do
        echo "fuzz-$target: crashing input: $f"
    done
    f=$(echo "$found" | head -n 1)
    echo "fuzz-$target: reproduce: $bin $f"
    echo "fuzz-$target: minimise:  $bin -minimize_crash=1 -runs=100000 -artifact_prefix=$art/min- $f"
    echo "fuzz-$target: keep it:   cp <minimal input> tests/fuzz/regressions/$target/"
else
    echo "fuzz-$target: no crashing input was written (see the log)"
fi
exit 1
