#!/usr/bin/env bash
# The GPU session of issue 17, as one call of at most 10 minutes: on one CUDA machine,
# from the repo root, with the wheels of bench/gpu_wheels.sh carried in .whl/,
#   bash bench/gpu_loop.sh OUTDIR
# 1. the device renderer's tests (their CPU path) and its agreement with the host kernels
#    on CUDA (bench/device_render.py: pixels, id buffers, boxes);
# 2. rendering on the GPU, B = 1,024 / 4,096 worlds (1 and 8 recording threads), the
#    host kernels beside it;
# 3. the closed loop with perception on the GPU (bench/gpu_closed_loop.py), deciding on
#    every step and on every 3rd, B = 1,024 / 4,096;
# 4. planner training with perception in the loop (launch/train_planner_perception_gpu.yaml,
#    resumed from planning/weights/planner.zip for TRAIN_MORE decisions): decisions/s;
# everything printed also goes to OUTDIR/*.log and the JSON lines to OUTDIR/*.json.
# A CPU dry run: DEVICE=cpu WORLDS="8" ENVS="4" SECONDS_=0.5 bash bench/gpu_loop.sh /tmp/x
set -u
OUTDIR=${1:?usage: bash bench/gpu_loop.sh OUTDIR}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
WORLDS=${WORLDS:-1024 4096}
ENVS=${ENVS:-1024 4096}
SECONDS_=${SECONDS_:-4}
TRAIN_MORE=${TRAIN_MORE:-262144}
export PYTHONUNBUFFERED=1
mkdir -p "$OUTDIR"
t0=$(date +%s)
stamp() { echo "[gpu_loop +$(( $(date +%s) - t0 ))s] $*"; }
if [ -d .whl ] && ! $PY -c "import gymnasium, stable_baselines3, ultralytics, pydantic" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
stamp "python $($PY -c 'import sys, torch, numba; print(sys.version.split()[0], "torch", torch.__version__, "numba", numba.__version__, "cuda", torch.cuda.is_available())')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null

stamp "1. tests (CPU path) and agreement"
timeout 200 $PY -m pytest -q -x -p no:cacheprovider tests/sim/test_device_render.py \
  tests/sim/test_device_vector.py 2>&1 | tail -3 | tee "$OUTDIR/tests.log"

stamp "2. rendering"
timeout 220 $PY bench/device_render.py --devices "$DEVICE" --worlds $WORLDS --threads 1 8 \
  --seconds "$SECONDS_" 2>&1 | tee "$OUTDIR/render.log" | grep -v '^{'
tail -n 1 "$OUTDIR/render.log" > "$OUTDIR/render.json"

stamp "3. closed loop"
timeout 240 $PY bench/gpu_closed_loop.py --device "$DEVICE" --envs $ENVS \
  --decide-every 1 3 --threads 8 --seconds "$SECONDS_" 2>&1 | tee "$OUTDIR/loop.log" | grep -v '^{'
tail -n 1 "$OUTDIR/loop.log" > "$OUTDIR/loop.json"

stamp "4. planner training with perception in the loop"
RECIPE=launch/train_planner_perception_gpu.yaml
if [ "$DEVICE" = cpu ]; then  # a dry run: the recipe on the CPU, a few envs
  sed -e 's/^perceiver_device: cuda/perceiver_device: cpu/' -e 's/^device: cuda/device: cpu/' \
      -e 's/^n_envs: 1024/n_envs: 4/' -e 's/^n_steps: 64 /n_steps: 16 /' \
      -e 's/^batch_size: 16384/batch_size: 32/' -e 's/^render_threads: 8/render_threads: 1/' \
      "$RECIPE" > /tmp/gpu_loop_recipe.yaml
  RECIPE=/tmp/gpu_loop_recipe.yaml
fi
rm -rf /tmp/gpu_loop_train
timeout 200 $PY -m launch train-planner "$RECIPE" --resume planning/weights/planner.zip \
  --timesteps $(( 5013504 + TRAIN_MORE )) --out /tmp/gpu_loop_train --no-progress \
  > "$OUTDIR/train.log" 2>&1
tail -n 1 "$OUTDIR/train.log" | tee "$OUTDIR/train.json" | $PY -c \
  "import json, sys; d = json.loads(sys.stdin.read()); print('training with perception:', d['trained_now'], 'decisions,', d['agent_steps_per_s'], 'decisions/s')" \
  || tail -c 1500 "$OUTDIR/train.log"
stamp "end"
