#!/usr/bin/env bash
# The README's scaling study, end to end: IsoFLOP plans for masked diffusion (mdm) and the
# autoregressive baseline (ar) on the built-in corpus, their trainings, the fit, and the
# speed/quality benchmark of the best run of each family at the largest budget.
#
#   bash benchmarks/scaling_study.sh                  # three budgets, about an hour on 2 CPU cores
#   JOBS=8 THREADS=2 bash benchmarks/scaling_study.sh # 8 trainings at a time on a 16-core machine
#
# Settings (environment variables):
#   OUT      folder of everything (default runs/scaling-study); rerunning continues where it stopped
#   BUDGETS  compute budgets in FLOPs, C = 6 N D (default 1e12,3e12,1e13)
#   JOBS     trainings run at the same time (default 1: one after another in one process)
#   THREADS  CPU threads per training (default: all cores with JOBS=1, else 1)
#   JUDGE    judge LM of the generation benchmark (default smollm2; empty: entropy and distinct-n only)
#   EXTRA    further `scaling plan` flags for both families, e.g. "--sizes 3 --set train.batch_size=8"
#   BENCH    further `bench generate` flags, e.g. "--prompts 8 --prompt-length 8"
#   MASKDIFF the command (default maskdiff; e.g. "python -m maskdiff")
set -euo pipefail

OUT=${OUT:-runs/scaling-study}
BUDGETS=${BUDGETS:-1e12,3e12,1e13}
JOBS=${JOBS:-1}
JUDGE=${JUDGE-smollm2}
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
read -r -a BENCH_ARGS <<< "${BENCH:-}"
read -r -a MASKDIFF_CMD <<< "${MASKDIFF:-maskdiff}"
if [ "$JOBS" -gt 1 ]; then THREADS=${THREADS:-1}; fi
THREAD_ARGS=()
if [ -n "${THREADS:-}" ]; then THREAD_ARGS=(--threads "$THREADS"); fi

for family in mdm ar; do
    "${MASKDIFF_CMD[@]}" scaling plan --family "$family" --budgets "$BUDGETS" --out "$OUT/$family.json" "${EXTRA_ARGS[@]}"
done

if [ "$JOBS" -gt 1 ]; then
    # one command per run, each resumable (--resume auto); -d '\n' keeps every line one argument
    for family in mdm ar; do
        "${MASKDIFF_CMD[@]}" scaling run "$OUT/$family.json" --print "${THREAD_ARGS[@]}"
    done | xargs -d '\n' -P "$JOBS" -n 1 bash -c 'eval "$1"' _
else
    for family in mdm ar; do
        "${MASKDIFF_CMD[@]}" scaling run "$OUT/$family.json" --quiet "${THREAD_ARGS[@]}"
    done
fi

"${MASKDIFF_CMD[@]}" scaling fit "$OUT/mdm" "$OUT/ar" --out "$OUT/fit"

# the speed/quality trade-off: the lowest final loss of each family at the largest budget
read -r MDM_RUN AR_RUN < <(python - "$OUT" <<'PY'
import sys
from maskdiff.scaling.fit import collect_runs

points, _ = collect_runs([f"{sys.argv[1]}/mdm", f"{sys.argv[1]}/ar"])
top = max(p.budget for p in points)
print(*(min((p for p in points if p.family == f and p.budget == top), key=lambda p: p.loss).run for f in ("mdm", "ar")))
PY
)
JUDGE_ARGS=()
if [ -n "$JUDGE" ]; then JUDGE_ARGS=(--judge "$JUDGE"); fi
"${MASKDIFF_CMD[@]}" bench generate --mdm "$MDM_RUN" --ar "$AR_RUN" --out "$OUT/bench" --quiet "${JUDGE_ARGS[@]}" "${THREAD_ARGS[@]}" "${BENCH_ARGS[@]}"
