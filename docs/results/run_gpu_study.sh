#!/usr/bin/env bash
# The GPU part of the accuracy study (docs/accuracy.md): several comparisons at once on one GPU
# with the JAX backend, each `experiments.compare --jobs=N`, stopped at a deadline; whatever
# finished is tabulated with `--no_train` and packed (results, histories, logs and tables; no
# weights) into $OUT/study-<UTC time>.tgz.
#
#   OUT=/tmp/out BUDGET_S=520 bash docs/results/run_gpu_study.sh
#
# Needs python3 with jax (GPU), keras, absl-py, numpy and matplotlib, and Fashion-MNIST's IDX
# files in $DCM_FASHION_MNIST_DIR (default .gpu_data/). Wheels in .whl/ are installed first when
# present (a machine that cannot reach PyPI). TensorFlow is not needed. STUDY_FLAGS adds
# compare.py overrides to every comparison (e.g. "--epochs=1 --seeds=0" for a dry run).
set -u
T0=$(date +%s)
BUDGET_S=${BUDGET_S:-520}   # seconds until unfinished runs are killed
OUT=${OUT:-runs/gpu_study_out}
WORK=${WORK:-/tmp/dcm_gpu_study}
STUDY_FLAGS=${STUDY_FLAGS:-}
mkdir -p "$OUT" "$WORK"

WHEELS=${WHEELS:-.whl}
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false
export DCM_FASHION_MNIST_DIR=${DCM_FASHION_MNIST_DIR:-$PWD/.gpu_data}
# Runs of one network pair compile the same step functions: compile once, reuse across processes.
export JAX_COMPILATION_CACHE_DIR=$WORK/jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 - <<'EOF' || exit 1
import jax, keras
from dcm_keras import data
print("jax", jax.__version__, jax.devices(), "keras", keras.__version__, keras.backend.backend())
ds = data.load_arrays("fashion_mnist", "train", batch_size=128, seed=0)
print("fashion_mnist train batches:", len(ds))
EOF
(nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 20 \
  > "$WORK/gpu_utilization.csv" 2>/dev/null &)

# name:jobs. Every comparison starts at once; the jobs add up to about the CPU cores.
PLAN=${PLAN:-"fmnist_n2048_e100:6 fmnist_n60000_e8:6 fmnist_n2048_e100_dcm_t3:1
  fmnist_n2048_e100_dcm_norm:1 fmnist_n2048_e100_dcm_wd0:1 fmnist_n2048_e100_dcm_warmup10:1
  fmnist_n2048_e100_dcm_kdw05:1"}
for item in $PLAN; do
  name=${item%%:*}; jobs=${item##*:}
  left=$((T0 + BUDGET_S - $(date +%s)))
  # timeout kills its whole process group: compare.py and the training processes it started.
  timeout -s KILL "$left" python3 -m experiments.compare \
    --config="docs/results/configs/$name.json" --work_dir="$WORK" --jobs="$jobs" $STUDY_FLAGS \
    > "$WORK/$name.compare.log" 2>&1 &
done
wait
echo "training stopped after $(( $(date +%s) - T0 ))s"
failed=$(grep -l Traceback "$WORK"/*/*/*/train.log 2>/dev/null | head -1)
[ -n "$failed" ] && { echo "== a failed run: $failed"; tail -25 "$failed"; }

for item in $PLAN; do
  name=${item%%:*}
  python3 -m experiments.compare --config="docs/results/configs/$name.json" \
    --work_dir="$WORK" --no_train $STUDY_FLAGS > "$WORK/$name.table.log" 2>&1
  echo "== $name: $(grep -c 'test error' "$WORK/$name.table.log") finished runs"
  sed -n '/^| networks/,/^Settings\|^$/p' "$WORK/$name.table.log" | head -12
done
grep -h "done in" "$WORK"/*.compare.log | head -80 > "$WORK/run_times.txt"
# A new name per run: an earlier run's archive in $OUT is never replaced.
tar -czf "$OUT/study-$(date -u +%Y%m%d-%H%M%S).tgz" -C "$WORK" --exclude='*.keras' --exclude='backup' \
  --exclude='jax_cache' --exclude='test_error.png' .
ls -la "$OUT"
