# Sourced by the sbatch templates: rendezvous endpoint and NCCL settings for multi-GPU / multi-node runs.
# Every value can be overridden from the environment of `sbatch`.

# Rendezvous: torchrun on every node meets on the first node of the allocation.
if command -v scontrol >/dev/null 2>&1 && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
else
  # No scontrol (dry runs off the cluster): first host of a simple list such as gpu[01-02],gpu07.
  first=${SLURM_JOB_NODELIST:-localhost}
  first=${first%%,*}
  if [[ "$first" == *"["* ]]; then
    rest=${first#*[}
    first="${first%%[*}${rest%%[-,\]]*}"
  fi
  MASTER_ADDR=${MASTER_ADDR:-$first}
fi
MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))} # per job: jobs sharing a node differ
export MASTER_ADDR MASTER_PORT
export RDZV_ENDPOINT=${RDZV_ENDPOINT:-$MASTER_ADDR:$MASTER_PORT}
export RDZV_ID=${RDZV_ID:-${SLURM_JOB_ID:-ltxdist}}

# NCCL. Defaults suit InfiniBand clusters of 8xH100 nodes; check them with your cluster's docs.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}                     # INFO prints the chosen transports
export NCCL_IB_DISABLE=${NCCL_IB_DISABLE:-0}              # inter-node traffic over InfiniBand / RoCE
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-^lo,docker0} # bootstrap over a real interface
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-1}             # NVLink SHARP on H100 (NVSwitch) nodes
# A hung collective (a dead rank) raises after the timeout instead of blocking forever, so the job
# fails and can be requeued.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
