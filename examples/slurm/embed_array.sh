#!/bin/bash
# Embed a large set of molecule files as a SLURM array of N shards, then merge the shards in a
# job that starts only when every shard succeeded.
#
#   N=32 MODEL=runs/ddp/best.pt OUT=embeddings/all.h5 bash examples/slurm/embed_array.sh 'data/*.sdf.gz'
#
# Run it with bash (it calls sbatch twice); it prints the two job ids.
# Shard semantics of `molgiae embed --shard I/N`: I is 0-based, and shard I takes the records whose
# global position p (over all inputs, in order; bad records count too) has p % N == I. Each array
# task writes one shard file; `molgiae merge` puts the rows back in input order, as one unsharded
# `molgiae embed` would have written them (and warns about missing shards).
# A failed array task can simply be resubmitted alone: sbatch --array=<I> ... with the same N.
set -euo pipefail

if [ "$#" -lt 1 ]; then
    echo "usage: N=<shards> [MODEL=ckpt.pt] [OUT=merged.h5] bash $0 INPUT [INPUT ...]" >&2
    exit 2
fi
N=${N:-16}
OUT=${OUT:-embeddings/merged.h5}
SHARDS=${SHARDS:-$(dirname "$OUT")/shards}
MODEL_OPT=${MODEL:+--model $MODEL}
PARTITION_OPT=${PARTITION:+--partition=$PARTITION}
INPUTS=$(printf '%q ' "$@")
mkdir -p logs "$SHARDS"

array_id=$(sbatch --parsable $PARTITION_OPT --job-name=molgiae-embed --array=0-$((N - 1)) \
    --gpus=1 --cpus-per-task=8 --time=04:00:00 --requeue --output=logs/%x-%A_%a.out <<SBATCH
#!/bin/bash
set -euo pipefail
molgiae embed $INPUTS --shard \${SLURM_ARRAY_TASK_ID}/$N -o "$SHARDS/part-\${SLURM_ARRAY_TASK_ID}-of-$N.h5" \
    $MODEL_OPT --quiet
SBATCH
)

merge_id=$(sbatch --parsable $PARTITION_OPT --job-name=molgiae-merge --dependency=afterok:$array_id \
    --cpus-per-task=2 --time=01:00:00 --output=logs/%x-%j.out <<SBATCH
#!/bin/bash
set -euo pipefail
molgiae merge "$SHARDS"/part-*-of-$N.h5 -o "$OUT"
SBATCH
)

echo "embed array job $array_id ($N shards into $SHARDS), merge job $merge_id -> $OUT"
