#!/usr/bin/env bash
# One prepared GPU run (README, "GPU run"). On the device machine, from the repository root:
#   run(command="bash tools/gpu_run.sh", carry=["gpu_payload"], timeout_s=600)
# after `python tools/gpu_prepare.py` here. Arguments go to tools/gpu_run.py (e.g. --minutes 8);
# files land in $OUT (default: ./gpu_out), the log in $OUT/run.log.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1
PY="${PYTHON:-python3}"
{
    echo "gpu_run.sh: $(date -u +%FT%TZ) on $(hostname); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" tools/gpu_run.py "$@"
} 2>&1 | tee "$OUT/run.log"
