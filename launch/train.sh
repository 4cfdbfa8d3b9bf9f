#!/usr/bin/env bash
# torchrun on one node (or on each node of a SLURM job, see slurm/): NPROC training processes; every
# argument is a Hydra override passed through to ltxdist.training.train.
#
#   NPROC=8 launch/train.sh parallel=fsdp2 model=ltx23_22b data=shards data.path=/data/shards run.name=x
#   launch/train.sh --dry-run parallel=fsdp2 ...    # resolved config, world layout, torchrun command
#
# Environment: NPROC (default: the number of GPUs, else 1), NNODES (default 1), RDZV_ENDPOINT (host:port
# on the first node; needed when NNODES > 1, slurm/ sets it), RDZV_ID (default ltxdist), PYTHON
# (default .venv/bin/python), DRY_RUN=1 (same as --dry-run).
# parallel.devices / parallel.num_nodes are set from NPROC / NNODES (appended last, so they win).
#
# Signals: SIGUSR1 and SIGTERM reach the training processes, which write a checkpoint at the next
# optimizer step and exit (after SIGUSR1 inside a SLURM job, rank 0 requeues the job first). torchrun
# itself must ignore SIGUSR1: its default action would kill it and orphan the workers.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
DRY_RUN=${DRY_RUN:-0}
if [ "${1:-}" = "--dry-run" ]; then
  DRY_RUN=1
  shift
fi
if [ -z "${NPROC:-}" ]; then
  NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "${NPROC:-0}" -ge 1 ] || NPROC=1
fi
NNODES=${NNODES:-1}
OVERRIDES=("$@" "parallel.devices=$NPROC" "parallel.num_nodes=$NNODES")
if [ "$NNODES" -gt 1 ]; then
  : "${RDZV_ENDPOINT:?NNODES > 1 needs RDZV_ENDPOINT=host:port of the first node (slurm/ sets it)}"
  RDZV=(--nnodes "$NNODES" --rdzv_backend c10d --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "${RDZV_ID:-ltxdist}")
else
  RDZV=(--standalone --nnodes 1)  # a free local port: several single-node runs can share a machine
fi
CMD=("$PYTHON" -m torch.distributed.run "${RDZV[@]}" --nproc_per_node "$NPROC"
  -m ltxdist.training.train "${OVERRIDES[@]}")

if [ "$DRY_RUN" = 1 ]; then
  "$PYTHON" -m ltxdist.parallel.layout "${OVERRIDES[@]}"
  echo "# torchrun command (on every node)"
  printf '%q ' "${CMD[@]}"
  echo
  exit 0
fi

trap '' USR1 # inherited by torchrun, which then ignores it; the workers install their own handler
"${CMD[@]}" &
TORCHRUN=$!
# Forward to the workers (torchrun's children) in case the signal was sent to this script only.
trap 'pkill -USR1 -P "$TORCHRUN" 2>/dev/null || true' USR1
# torchrun passes SIGTERM on to its workers itself.
trap 'kill -TERM "$TORCHRUN" 2>/dev/null || true' TERM INT
while :; do
  set +e
  wait "$TORCHRUN"
  STATUS=$?
  set -e
  kill -0 "$TORCHRUN" 2>/dev/null || break # still alive: `wait` was interrupted by a trapped signal
done
exit "$STATUS"
