#!/usr/bin/env bash
# Submit an Odyssey study to SLURM as three chained jobs: setup → array (one run per task: a domain, or a
# model/domain with several models) → aggregate. The setup prepares raw sources per tokenizer and measures similarity.
#
#   launch/slurm/submit_study.sh STUDY.yaml
#
# Environment:
#   TRAIN_SBATCH_ARGS  extra sbatch options for the array tasks (e.g. "--partition=gpu --nodes=2")
#   STEP_SBATCH_ARGS   extra sbatch options for the setup and aggregation jobs
#   ARRAY_PARALLEL     run at most this many runs at once (sbatch --array=0-N%K)
#   PYTHON             the python with odyssey installed; SBATCH_PARTITION / SBATCH_ACCOUNT work as usual
# Prints the three job ids; the aggregation starts only if every array task finished (afterok), so a failed domain
# leaves it pending with reason DependencyNeverSatisfied: resubmit that task, then the aggregation.
# Before submitting, `odyssey study STUDY.yaml --dry-run --world-size N` prints what the study will cost.
set -euo pipefail
die() { echo "odyssey: error: $*" >&2; exit 2; }
[[ $# -eq 1 ]] || die "usage: $0 STUDY.yaml"
STUDY=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONSAFEPATH=1  # no working-directory folder (say a study's study/ output) may shadow odyssey's packages
export PYTHON
command -v sbatch >/dev/null || die "sbatch not found: run this on a SLURM login node"
runs=$("$PYTHON" -m odyssey study "$STUDY" --list) || exit 2  # validates the study file before submitting
n=$(wc -l <<<"$runs")
mkdir -p "${ODYSSEY_LOGS:-logs}"
setup=$(sbatch --parsable ${STEP_SBATCH_ARGS:-} "$here/study_step.sbatch" "$STUDY" setup)
array=$(sbatch --parsable --dependency="afterok:$setup" --array="0-$((n - 1))${ARRAY_PARALLEL:+%$ARRAY_PARALLEL}" \
        ${TRAIN_SBATCH_ARGS:-} "$here/study_array.sbatch" "$STUDY")
aggregate=$(sbatch --parsable --dependency="afterok:$array" ${STEP_SBATCH_ARGS:-} "$here/study_step.sbatch" "$STUDY" aggregate)
echo "setup=$setup array=$array aggregate=$aggregate runs=$n ($(paste -sd' ' <<<"$runs"))"
