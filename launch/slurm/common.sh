# Sourced by Odyssey's sbatch scripts: the python to use, the rendezvous address, per-task logs, preemption.
# Variables a user may set (sbatch passes the submitting shell's environment on by default):
#   PYTHON        the python with odyssey installed (default: python on PATH)
#   ODYSSEY_LOGS  folder for task logs (default: logs, relative to the submit directory)
#   MASTER_ADDR / MASTER_PORT   rendezvous (default: first node's IP / this job's port, launch/hostfile.py: master_port)

odyssey_die() { echo "odyssey: error: $*" >&2; exit 2; }

odyssey_slurm_env() {
  [[ -n "${SLURM_JOB_ID:-}" ]] || odyssey_die "not inside a SLURM job: submit with sbatch"
  ODYSSEY_LOGS=${ODYSSEY_LOGS:-logs}
  mkdir -p "$ODYSSEY_LOGS"
  if [[ -z "${MASTER_ADDR:-}" ]]; then
    MASTER_ADDR=$("$PYTHON" -m launch.hostfile --from-slurm --master-addr) || exit 2
  fi
  if [[ -z "${MASTER_PORT:-}" ]]; then
    MASTER_PORT=$("$PYTHON" -m launch.hostfile --from-slurm --master-port) || exit 2
  fi
  export MASTER_ADDR MASTER_PORT
  # one name for the logs of this job, or of this array task
  JOB_TAG=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
  JOB_TAG=${JOB_TAG:-$SLURM_JOB_ID}
  echo "[slurm] $(date '+%F %T') job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST," \
       "master $MASTER_ADDR:$MASTER_PORT, task logs $ODYSSEY_LOGS/${SLURM_JOB_NAME}-${JOB_TAG}-task<N>.out"
}

# srun options every training step uses: a failed task ends the step, one log per task, appended across requeues.
odyssey_srun_opts() {
  echo --kill-on-bad-exit=1 --open-mode=append --output="$ODYSSEY_LOGS/%x-${JOB_TAG}-task%t.out"
}

# Run "$@" (an srun step) so that it survives preemption. On USR1 (sent by SLURM at --signal=B:USR1@<s> before the
# time limit, or by `scancel --signal=USR1 --batch JOB`) every step of the job gets USR1: the trainer saves a
# checkpoint at the next step boundary and exits 0. The job is then requeued, restarts this script from the top,
# and the trainer's `--resume auto` continues from that checkpoint.
# A TERM (preemption, scancel, a node going down) goes to every process of the job, srun included, and srun answers
# it by sending SIGKILL to its tasks: the ranks cannot checkpoint, and the next start resumes from the last periodic
# checkpoint. To checkpoint at preemption, have SLURM send the job's --signal instead (slurm.conf
# PreemptParameters=send_user_signal, GraceTime longer than a save): that is the USR1 path above. This script traps
# TERM so that it reports what happened and leaves the requeue to SLURM (a preemption requeues, a cancel is a stop).
odyssey_run_preemptible() {
  local preempted=0 terminated=0 rc=0 pid
  trap 'preempted=1; echo "[slurm] $(date +%T) USR1: asking every rank to checkpoint"; scancel --signal=USR1 "$SLURM_JOB_ID"' USR1
  trap 'terminated=1; echo "[slurm] $(date +%T) TERM: srun ends the step; a restart resumes from the last checkpoint"' TERM
  "$@" &
  pid=$!
  while :; do
    rc=0
    wait "$pid" || rc=$?
    kill -0 "$pid" 2>/dev/null || break  # wait returned for a trapped signal: the step still runs
  done
  trap - USR1 TERM
  if (( terminated )); then
    echo "[slurm] $(date +%T) step ended by TERM (exit $rc); a preempted job is requeued by SLURM"
    exit "$rc"
  fi
  if (( preempted && rc == 0 )); then
    echo "[slurm] $(date +%T) checkpoint saved; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID" || odyssey_die "scontrol requeue $SLURM_JOB_ID failed (is the job --requeue?)"
    exit 0
  fi
  (( rc == 0 )) || echo "[slurm] $(date +%T) training step failed (exit $rc); see the task logs" >&2
  return "$rc"
}
