#!/usr/bin/env bash
# A GPU session prepared to fit a short lease, in two phases that can run as separate calls:
#   check  real images -> archive -> npz, the benchmark, the graph-vs-eager check
#   train  MODELS trained on the real images one after the other, each for at most SECONDS (then
#          stopped by SIGTERM, which keeps the completed epochs; the history is read back from the
#          checkpoint). Extra train options (e.g. --overlap-update) come from $TRAIN_FLAGS.
#
# usage: tests/gpu/gpu_session.sh check|train JPEG_NPZ ARCHIVE_TOOL OUT_DIR [SECONDS] [EPOCHS] [MODELS]
#   JPEG_NPZ      the project's shared cifar10-jpeg.npz (real CIFAR-10 images as JPEG)
#   ARCHIVE_TOOL  make_cifar10_archive.py, which turns it into the official archive layout
# The npz is kept in .gpuwork/ (ignored by git) for the next phase. Each step runs even if an
# earlier one failed; what it printed lands in OUT_DIR. To try the script on the CPU first, shrink it:
#   DEVICE=cpu BENCH_STEPS=2 BENCH_WARMUP=1 PROFILE_STEPS=2 CHECK_LIMIT=16 CHECK_TEST_LIMIT=16 \
#       tests/gpu/gpu_session.sh check ...
set -u
phase=$1 jpeg=$2 tool=$3 out=$4 seconds=${5:-300} epochs=${6:-20} models=${7:-paper torchvision}
device=${DEVICE:-cuda} bench_steps=${BENCH_STEPS:-400} bench_warmup=${BENCH_WARMUP:-50}
profile_steps=${PROFILE_STEPS:-50} check_limit=${CHECK_LIMIT:-10000}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
work=$PWD/.gpuwork
mkdir -p "$out" "$work"
exec > >(tee "$out/session-$phase.log") 2>&1
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
if [ ! -f "$work/cifar10.npz" ]; then
    python "$tool" "$work/cifar-10-python.tar.gz" --npz "$jpeg"
    python -m alexnet_cifar prepare "$work/cifar-10-python.tar.gz" "$work/cifar10.npz"
fi

if [ "$phase" = check ]; then
    python -m alexnet_cifar bench --data "$work/cifar10.npz" --models paper,torchvision --steps "$bench_steps" \
        --warmup "$bench_warmup" --device "$device" \
        --loops plain,engine,engine-foreach,engine+overlap,engine-eager,engine+bf16+channels_last \
        --profile "$profile_steps" --out "$out" \
        || echo "BENCH FAILED"
    python tests/gpu/check_graph_vs_eager.py --data "$work/cifar10.npz" --epochs 2 --limit-train "$check_limit" \
        ${CHECK_TEST_LIMIT:+--limit-test "$CHECK_TEST_LIMIT"} --device "$device" --out "$out/graph_vs_eager.json" \
        || echo "CHECK FAILED (exit $?)"
fi

if [ "$phase" = train ]; then
    # One after the other: two processes on one GPU time-slice it (run together on the H200, each
    # epoch took about 42 s, twice what the bench predicts for one alone).
    for model in $models; do
        rm -rf "$work/$model"
        # shellcheck disable=SC2086  # TRAIN_FLAGS is a list of options
        timeout -s TERM "$seconds" python -m alexnet_cifar train --data "$work/cifar10.npz" --model "$model" \
            --out "$work/$model" --epochs "$epochs" --device "$device" --log "$out/train_$model.log" ${TRAIN_FLAGS:-}
    done
    for model in $models; do  # an interrupted run keeps its history in the checkpoint
        python - "$work/$model" "$out/history_$model.json" <<'PY'
import json, sys, pathlib, torch
run, dest = pathlib.Path(sys.argv[1]), sys.argv[2]
if (run / "history.jsonl").exists():
    history = [json.loads(l) for l in (run / "history.jsonl").read_text().splitlines()]
else:
    history = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["history"]
json.dump(history, open(dest, "w"), indent=1)
print(dest, len(history), "epochs")
PY
    done
fi
echo "phase $phase took $(( $(date +%s) - start ))s"
