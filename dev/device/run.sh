#!/usr/bin/env bash
# On the lent GPU machine, in the repository root (call 2 of README.md): runs each line of
# dev/device/plan.txt (gmptl arguments, `{OUT}` for the run folder) under one time limit, then
# packs every fold's result.json and test predictions into $OUT/runs.tgz (no weights).
set -uf  # -f: no globbing of grid values such as pseudo.scales=[512]
export PYTHONPATH=/tmp/site:$PWD GMPTL_CACHE=$PWD/.dev/cache GMPTL_COMMIT=$(cat .dev/commit) \
       HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p /root/d /root/sw && { [ -d /root/d/ravdess ] || cp -r .dev/ravdess /root/d/; }
# A run cut short on a machine that has gone back: its returned folds (runs.tgz unpacked into .dev/resume/,
# carried) are put back, and the sweep or reproduce skips what they finished.
[ -d .dev/resume ] && cp -rn .dev/resume/. /root/sw/
deadline=$(( $(date +%s) + ${LIMIT:-540} ))
while IFS= read -r line; do
    case "$line" in ''|'#'*) continue;; esac
    left=$(( deadline - $(date +%s) ))
    [ "$left" -gt 30 ] || { echo "no time left for: $line"; break; }
    echo "== $(date +%T) ($left s left): gmptl ${line//\{OUT\}//root/sw}"
    # timeout's SIGTERM ends the sweep's workers too; a later call on a warm machine resumes them
    timeout --kill-after=30 "$left" python3 -m gmptl ${line//\{OUT\}//root/sw} >> /root/sw/run.log 2>&1
    grep -v -E "it/s\]|s/it\]" /root/sw/run.log | tail -n 25
done < "${PLAN:-dev/device/plan.txt}"
cd /root/sw && find . \( -name result.json -o -name config.json -o -name "predictions*" -o -name sweep.json -o -name "log.jsonl" -o -name run.log \) \
    -print0 | tar -czf "$OUT/runs.tgz" --null -T - && ls -l "$OUT"
