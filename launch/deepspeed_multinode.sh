#!/usr/bin/env bash
# Multi-node training with the deepspeed launcher, which starts one `deepspeed.launcher.launch` per node over pdsh/ssh.
#
#   HOSTS=node1,node2 SLOTS=8 launch/deepspeed_multinode.sh run.yaml [dotted.key=value ...] [--resume auto]
#   HOSTFILE=my_hostfile      launch/deepspeed_multinode.sh run.yaml
#
# Environment (HOSTS or HOSTFILE is required; the rest is optional):
#   HOSTS          comma-separated hosts; the first is the master      HOSTFILE  an existing deepspeed hostfile
#   SLOTS          ranks per host with HOSTS (default: GPUs on this node, else 1)
#   MASTER_ADDR    rendezvous address (default: the first host's IP; a loopback head with remote workers is refused)
#   MASTER_PORT    rendezvous port (default: launch/hostfile.py's master_port, 29500)
#   SSH_PORT       sshd port on the nodes (--ssh_port: used by the runner's ssh check and by pdsh)
#   PDSH_SSH_ARGS_APPEND  extra ssh options for pdsh, e.g. "-i ~/.ssh/cluster_key"
#   FORWARD_ENV    more variable names to carry to every rank (space-separated)
#   LAUNCH_DIR     where the hostfile, the env files (0600, removed at the end) and launch.log go
#                  (default: logs/launch-<date>-<pid>)
#
# The working directory must be the same path on every node (shared filesystem): pdsh runs `cd $PWD` there, with the
# same python (this one's path). Exit status: non-zero if any node's rank failed (pdsh -S returns the worst one).
set -euo pipefail

die() { echo "odyssey: error: $*" >&2; exit 2; }
[[ $# -ge 1 ]] || die "usage: HOSTS=a,b $0 CONFIG.yaml [overrides...] [--resume auto]"
[[ -f "$1" ]] || die "config not found: $1"
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONSAFEPATH=1  # no working-directory folder (say a study's study/ output) may shadow odyssey's packages
command -v pdsh >/dev/null || die "pdsh not found on PATH (Debian/Ubuntu: apt-get install pdsh)"

LAUNCH_DIR=${LAUNCH_DIR:-logs/launch-$(date +%Y%m%d-%H%M%S)-$$}
mkdir -p "$LAUNCH_DIR"
LAUNCH_DIR=$(cd "$LAUNCH_DIR" && pwd)
if [[ -n "${HOSTFILE:-}" ]]; then
  [[ -f "$HOSTFILE" ]] || die "HOSTFILE not found: $HOSTFILE"
  cp "$HOSTFILE" "$LAUNCH_DIR/hostfile"
  HOSTS=$(awk 'NF && $1 !~ /^#/ {print $1}' "$HOSTFILE" | paste -sd, -)
  [[ -n "$HOSTS" ]] || die "HOSTFILE $HOSTFILE lists no hosts"
  MASTER_ADDR=$("$PYTHON" -m launch.hostfile --hosts "$HOSTS" --master-addr) || exit 2
elif [[ -n "${HOSTS:-}" ]]; then
  master=$("$PYTHON" -m launch.hostfile --hosts "$HOSTS" ${SLOTS:+--slots "$SLOTS"} --out "$LAUNCH_DIR/hostfile") || exit 2
  MASTER_ADDR=${master#MASTER_ADDR=}
else
  die "set HOSTS=host1,host2 or HOSTFILE=path"
fi
MASTER_PORT=${MASTER_PORT:-$("$PYTHON" -m launch.hostfile --hosts "$HOSTS" --master-port)}
export MASTER_ADDR MASTER_PORT

# Every host must take a key login before pdsh starts anything: the runner itself only checks the first one.
ssh_opts=(-o BatchMode=yes -o ConnectTimeout=10 ${SSH_PORT:+-p "$SSH_PORT"})
for host in ${HOSTS//,/ }; do
  ssh "${ssh_opts[@]}" "$host" true </dev/null 2>/dev/null || die "host $host: no passwordless ssh login (try: ssh $host)"
done

# Secrets (variables named *KEY*, *SECRET*, *TOKEN*, *PASSWORD*, and a tracking URI's user:password) never go on a
# command line: the deepspeed runner pastes what it forwards into `export K=V;` on every node's command line and logs
# it. They go into a file only this user can read, which each rank loads at start (ODYSSEY_SECRETS_FILE), and are
# unset here. Both files are removed when the launch ends.
umask 077
SECRETS_FILE="$LAUNCH_DIR/secrets.json"
trap 'rm -f "$SECRETS_FILE" "$LAUNCH_DIR/deepspeed_env"' EXIT
eval "$("$PYTHON" -m data_prep.redact --env-file "$SECRETS_FILE")" || die "could not write $SECRETS_FILE"
export ODYSSEY_SECRETS_FILE="$SECRETS_FILE"

# The variables every rank needs. deepspeed forwards MLFLOW*, PYTHON* and (on CUDA) NCCL* itself; the rest goes
# through its env file (DS_ENV_FILE), values shell-quoted because the runner pastes them into `export K=V;`.
vars=(PATH VIRTUAL_ENV DS_ACCELERATOR HF_HOME HF_HUB_OFFLINE TRANSFORMERS_OFFLINE TOKENIZERS_PARALLELISM
      OMP_NUM_THREADS TORCH_EXTENSIONS_DIR GLOO_SOCKET_IFNAME S3_ENDPOINT_URL ${FORWARD_ENV:-})
vars+=($(compgen -e | grep -E '^(NCCL_|ODYSSEY_|AWS_)' || true))
: > "$LAUNCH_DIR/deepspeed_env"
for v in "${vars[@]}"; do
  [[ -n "${!v+x}" ]] && printf '%s=%q\n' "$v" "${!v}" >> "$LAUNCH_DIR/deepspeed_env"
done
export DS_ENV_FILE="$LAUNCH_DIR/deepspeed_env"

echo "[launch] hosts $HOSTS, master $MASTER_ADDR:$MASTER_PORT, files in $LAUNCH_DIR" | tee "$LAUNCH_DIR/launch.log"
deepspeed_bin=$(dirname "$PYTHON")/deepspeed
[[ -x "$deepspeed_bin" ]] || deepspeed_bin=deepspeed
set +e
# the log goes through the redaction filter too: a secret a rank prints is masked before it reaches a file
"$deepspeed_bin" --hostfile "$LAUNCH_DIR/hostfile" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  --launcher pdsh ${SSH_PORT:+--ssh_port "$SSH_PORT"} --module trainer.train "$@" 2>&1 \
  | "$PYTHON" -m data_prep.redact | tee -a "$LAUNCH_DIR/launch.log"
rc=${PIPESTATUS[0]}
[[ $rc -eq 0 ]] || echo "odyssey: error: the launch failed (exit $rc): a rank on some node failed; see $LAUNCH_DIR/launch.log (lines are prefixed by host)" >&2
exit "$rc"
