#!/usr/bin/env bash
# The next GPU session of issue 3 (the detector target), as one script, about 10 minutes
# on one H100/H200: on one CUDA machine with drivestack's dependencies importable, from the
# repo root,
#   bash bench/gpu_detector.sh OUTDIR
# 1. renders the 24,000 frames of launch/dataset_large.yaml (one process per spare core);
# 2. trains the shipped detector on at input sizes 480 and 640 side by side on the one GPU
#    (launch/train_detector_gpu_{480,640}.yaml, a wall-clock budget each);
# 3. scores the shipped detector and both runs on the held-out test split (our COCO
#    metric, `drivestack eval-perception`, each at the size it was trained at);
# 4. times RawDetector's batched fp16 CUDA path (bench/perception_speed.py --batched-only)
#    with the GPU alone;
# 5. packs the runs' weights, results and logs into OUTDIR.
# FRAMES, WORKERS, DET_TIMEOUT, SIZES, DEVICE and DATA override the defaults (a CPU dry run:
#   FRAMES=40 WORKERS=1 DET_TIMEOUT=150 SIZES=480 DEVICE=cpu DATA=data/dry bash ... /tmp/dry).
set -u
OUTDIR=${1:?usage: bash bench/gpu_detector.sh OUTDIR}
PY=${PYTHON:-python3}
FRAMES=${FRAMES:-24000}
WORKERS=${WORKERS:-14}
DET_TIMEOUT=${DET_TIMEOUT:-480}
DEVICE=${DEVICE:-0}
SIZES=${SIZES:-"480 640"}
DATA=${DATA:-data/perception_large_v3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUTDIR/logs"
t0=$(date +%s)
stamp() { echo "[gpu_detector +$(( $(date +%s) - t0 ))s] $*"; }

stamp "dataset"
$PY -m launch dataset launch/dataset_large.yaml --out "$DATA" --frames "$FRAMES" \
  --workers "$WORKERS" > "$OUTDIR/logs/dataset.log" 2>&1 \
  || { stamp "dataset failed"; tail -5 "$OUTDIR/logs/dataset.log"; exit 1; }
stamp "dataset: $(tail -c 300 "$OUTDIR/logs/dataset.log")"

stamp "training at $SIZES"
for sz in $SIZES; do
  timeout "$DET_TIMEOUT" $PY -m launch train-perception launch/train_detector_gpu_$sz.yaml \
    --model detector --device "$DEVICE" --data "$DATA" > "$OUTDIR/logs/detector_$sz.log" 2>&1 &
done
wait; stamp "training done"
for sz in $SIZES; do echo "== $sz"; tail -c 600 "$OUTDIR/logs/detector_$sz.log"; echo; done

stamp "test split"
$PY -m launch eval-perception --data "$DATA" --device "$DEVICE" \
  > "$OUTDIR/logs/eval_shipped.log" 2>&1 &
for sz in $SIZES; do
  w=runs/perception_gpu_$sz/detector/weights/best.pt
  [ -f "$w" ] && $PY -m launch eval-perception --data "$DATA" --device "$DEVICE" --weights "$w" \
    > "$OUTDIR/logs/eval_$sz.log" 2>&1 &
done
wait
for f in "$OUTDIR"/logs/eval_*.log; do echo "== $f"; tail -n 1 "$f" | cut -c 1-400; done

stamp "RawDetector on CUDA"
$PY bench/perception_speed.py --device "$DEVICE" --seconds 2 --batched-only \
  > "$OUTDIR/logs/bench_batched.log" 2>&1
tail -n 8 "$OUTDIR/logs/bench_batched.log"

for sz in $SIZES; do
  R=runs/perception_gpu_$sz/detector
  tar -cf "$OUTDIR/detector_$sz.tar" $R/weights/best.pt $R/results.csv $R/args.yaml 2>/dev/null
done
tar -czf "$OUTDIR/logs.tar.gz" -C "$OUTDIR" logs && rm -rf "$OUTDIR/logs"
ls -la "$OUTDIR"; stamp "end"
