#!/bin/bash
# Multi-GPU, multi-node training of molgiae with torchrun under SLURM; requeue-safe.
#
#   sbatch examples/slurm/train_ddp.sh                       # defaults below
#   DATA=stores/geom_drugs.h5 OUT=runs/drugs sbatch --nodes=4 examples/slurm/train_ddp.sh
#
# One srun task per node starts torchrun, which starts one process per GPU; the nodes meet at a
# c10d rendezvous on the first node of the allocation. --batch-size is the GLOBAL batch, split
# across all nodes x GPUs (same training as one process with that batch size).
#
# Requeue safety: every run starts with --resume (a fresh OUT simply starts from scratch).
# Training is given a clean stop (--time-limit, total training minutes over all resumes) a few
# minutes before the job's wall-time ends; if it is not finished it then requeues itself. As a
# backstop, SLURM sends SIGUSR1 to this script 5 minutes before the limit (--signal) and the
# trap requeues the job; at most the steps since the last checkpoint (--checkpoint-every) are lost.
# Only rank 0 writes OUT (config.json, last.pt, best.pt, metrics.csv, ...).
#
#SBATCH --job-name=molgiae-ddp
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --mem=0
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out

set -euo pipefail

DATA=${DATA:-stores/geom_qm9.h5}           # a store of `molgiae data prepare` (or QM9 npz, ...)
OUT=${OUT:-runs/ddp-${SLURM_JOB_NAME:-molgiae}}
EPOCHS=${EPOCHS:-100}
BATCH=${BATCH:-512}                        # global batch (molecules)
SAMPLING=${SAMPLING:-boltzmann}            # all | uniform | boltzmann
MARGIN_MIN=${MARGIN_MIN:-10}               # stop cleanly this many minutes before the wall-time
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L | wc -l)}
WORKERS=${WORKERS:-4}                      # DataLoader workers per GPU process
PORT=${PORT:-29500}
EXTRA=${EXTRA:-}                           # more `molgiae train` options, e.g. EXTRA="--features 128 --lr 3e-4"

mkdir -p logs "$(dirname "$OUT")"
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $SLURM_NNODES node(s) x $GPUS_PER_NODE GPU(s), rendezvous $HEAD_NODE:$PORT"

requeue() {
    echo "$(date): SIGUSR1 (wall-time ends soon): requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
}
trap requeue USR1

# --time-limit counts training time over all resumes: what is done already + what is left of this job.
left_min=$(squeue -h -j "$SLURM_JOB_ID" -o %L | awk -F'[-:]' '{
    if (NF == 4) m = $1 * 1440 + $2 * 60 + $3; else if (NF == 3) m = $1 * 60 + $2; else m = $1; print m }')
done_min=$(python - "$OUT/last.pt" <<'PY'
import sys, pathlib, torch
p = pathlib.Path(sys.argv[1])
print(int(torch.load(p, weights_only=True)["run_state"]["seconds"] // 60) if p.exists() else 0)
PY
)
case "$left_min" in
    ''|*[!0-9]*) LIMIT=0 ;;                # no wall-time (UNLIMITED): no time limit
    *) LIMIT=$(( done_min + left_min - MARGIN_MIN )); [ "$LIMIT" -gt 0 ] || LIMIT=1 ;;
esac
echo "training time so far ${done_min} min, this job ${left_min} min left: --time-limit $LIMIT"

# The training runs in the background so that the USR1 trap can fire while we wait.
srun --kill-on-bad-exit=1 --ntasks-per-node=1 \
    torchrun --nnodes="$SLURM_NNODES" --nproc_per_node="$GPUS_PER_NODE" \
        --rdzv-id="$SLURM_JOB_ID" --rdzv-backend=c10d --rdzv-endpoint="$HEAD_NODE:$PORT" \
        -m molgiae train --data "$DATA" --out "$OUT" --resume --quiet \
        --epochs "$EPOCHS" --batch-size "$BATCH" --conformer-sampling "$SAMPLING" \
        --num-workers "$WORKERS" --checkpoint-every 500 --time-limit "$LIMIT" $EXTRA &
wait $!

# Finished, or stopped by the time limit? Requeue until every epoch is done.
if python - "$OUT/last.pt" "$EPOCHS" <<'PY'
import sys, torch
state = torch.load(sys.argv[1], weights_only=True)["run_state"]
sys.exit(0 if state["epoch"] >= int(sys.argv[2]) else 1)
PY
then
    echo "training finished: $OUT"
else
    echo "time limit reached before epoch $EPOCHS: requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
fi
