#!/usr/bin/env bash
# Every GPU check in one call, for a lent H100/H200 (see README "Benchmarks"). Carry .device-site
# (made by ../shared/device/pack-site.sh: Ray, smp, nibabel, FastAPI for CPython 3.12).
#   bash jobs/gpu_checks.sh            # writes logs under $OUT (or ./gpu-out)
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
if [ -f .device-site/site.tar.xz ]; then
  mkdir -p /tmp/site && tar -xJf .device-site/site.tar.xz -C /tmp/site
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1 RAY_DEDUP_LOGS=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, ray; print('torch', torch.__version__, 'ray', ray.__version__, torch.cuda.get_device_name())"
run() {  # name, seconds, command...
  local name=$1 secs=$2; shift 2
  [ "$secs" -gt 0 ] || { echo "=== $name skipped"; return; }
  echo "=== $name"; timeout "$secs" "$@" > "$OUT/$name.log" 2>&1; echo "exit $? ($name)"
  tail -n 25 "$OUT/$name.log"
}
run query ${QUERY_SECS:-300} python3 jobs/bench_query_gpu.py ${QUERY_ARGS:-}
run train ${TRAIN_SECS:-200} python3 jobs/bench_train_gpu.py ${TRAIN_ARGS:-}
echo "=== summary"; grep -h -E "^(RESULT|  )" "$OUT"/query.log "$OUT"/train.log | tail -n 40
