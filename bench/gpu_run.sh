#!/usr/bin/env bash
# The GPU session of issue 3, as one script (it made the GPU figures in bench/README.md and
# the large-data weights in docs/models.md): on one CUDA machine with drivestack's
# dependencies importable, from the repo root,
#   bash bench/gpu_run.sh OUTDIR
# 1. renders launch/dataset_large.yaml (24,000 frames) with one process per spare core,
#    while bench/perception_speed.py measures the GPU (Perceiver, then the batched pipeline);
# 2. trains, at once on the one GPU: the detector (a wall-clock budget, `hours` in
#    launch/train_perception_gpu_large.yaml) and the lane model with both backbones;
# 3. packs the runs' weights, results and logs into OUTDIR.
# FRAMES, WORKERS, LANE_EPOCHS, LANE_TIMEOUT and DET_TIMEOUT override the sizes (a CPU dry run uses tiny ones).
set -u
OUTDIR=${1:?usage: bash bench/gpu_run.sh OUTDIR}
PY=${PYTHON:-python3}
FRAMES=${FRAMES:-24000}
WORKERS=${WORKERS:-14}
LANE_EPOCHS=${LANE_EPOCHS:-24}
LANE_TIMEOUT=${LANE_TIMEOUT:-420}
DET_TIMEOUT=${DET_TIMEOUT:-450}
DEVICE=${DEVICE:-0}
LAUNCH=launch/train_perception_gpu_large.yaml
export PYTHONUNBUFFERED=1
mkdir -p "$OUTDIR/logs"
t0=$(date +%s)
stamp() { echo "[gpu_run +$(( $(date +%s) - t0 ))s] $*"; }

stamp "bench + dataset"
$PY bench/perception_speed.py --device "$DEVICE" --seconds 2 > "$OUTDIR/logs/bench_perceiver.log" 2>&1 \
  && $PY bench/perception_speed.py --device "$DEVICE" --seconds 2 --batched-only \
     > "$OUTDIR/logs/bench_batched.log" 2>&1 &
bench=$!
$PY -m launch dataset launch/dataset_large.yaml --frames "$FRAMES" --workers "$WORKERS" \
  > "$OUTDIR/logs/dataset.log" 2>&1 || { stamp "dataset failed"; tail -5 "$OUTDIR/logs/dataset.log"; }
stamp "dataset: $(tail -c 300 "$OUTDIR/logs/dataset.log")"
wait $bench; stamp "bench done"  # before training, so the GPU figures have the GPU alone
tail -n 3 "$OUTDIR/logs/bench_perceiver.log" "$OUTDIR/logs/bench_batched.log"

stamp "training: detector, lanes cnn, lanes vit"
timeout "$DET_TIMEOUT" $PY -m launch train-perception $LAUNCH --model detector --device "$DEVICE" \
  > "$OUTDIR/logs/detector.log" 2>&1 &
for b in cnn vit; do
  timeout "$LANE_TIMEOUT" $PY -m launch train-perception $LAUNCH --model lanes --backbone $b \
    --epochs "$LANE_EPOCHS" --device "$DEVICE" > "$OUTDIR/logs/lanes_$b.log" 2>&1 &
done
wait; stamp "training done"
for f in detector lanes_cnn lanes_vit; do echo "== $f"; tail -c 600 "$OUTDIR/logs/$f.log"; echo; done

R=runs/perception_large
tar -cf "$OUTDIR/detector.tar" $R/detector/weights/best.pt $R/detector/results.csv $R/detector/args.yaml 2>/dev/null
for b in cnn vit; do tar -cf "$OUTDIR/lanes_$b.tar" $R/lanes/$b/best.pt $R/lanes/$b/results.jsonl 2>/dev/null; done
tar -czf "$OUTDIR/logs.tar.gz" -C "$OUTDIR" logs && rm -rf "$OUTDIR/logs"
ls -la "$OUTDIR"; stamp "end"
