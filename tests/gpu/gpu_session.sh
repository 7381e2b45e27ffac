#!/usr/bin/env bash
# A GPU session prepared to fit a short lease, in two phases that can run as separate calls:
#   check  real images -> archive -> npz, the benchmark, the graph-vs-eager check
#   train  both models trained on the real images for at most SECONDS (then stopped by SIGTERM,
#          which keeps the completed epochs; their history is read back from the checkpoint)
#
# usage: tests/gpu/gpu_session.sh check|train JPEG_NPZ ARCHIVE_TOOL OUT_DIR [SECONDS] [EPOCHS]
#   JPEG_NPZ      the project's shared cifar10-jpeg.npz (real CIFAR-10 images as JPEG)
#   ARCHIVE_TOOL  make_cifar10_archive.py, which turns it into the official archive layout
# The npz is kept in .gpuwork/ (ignored by git) for the next phase. Each step runs even if an
# earlier one failed; what it printed lands in OUT_DIR.
set -u
phase=$1 jpeg=$2 tool=$3 out=$4 seconds=${5:-300} epochs=${6:-20}
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
    python -m alexnet_cifar bench --data "$work/cifar10.npz" --models paper,torchvision --steps 400 \
        --warmup 50 --device cuda --loops plain,engine,engine-foreach,engine-eager,engine+bf16+channels_last \
        --profile 50 --out "$out" \
        || echo "BENCH FAILED"
    python tests/gpu/check_graph_vs_eager.py --data "$work/cifar10.npz" --epochs 2 --limit-train 10000 \
        --out "$out/graph_vs_eager.json" || echo "CHECK FAILED (exit $?)"
fi

if [ "$phase" = train ]; then
    # Both trainings at once (one GPU, time-sliced): epochs are slower than alone, the curves the same.
    for model in paper torchvision; do
        rm -rf "$work/$model"
        timeout -s TERM "$seconds" python -m alexnet_cifar train --data "$work/cifar10.npz" --model "$model" \
            --out "$work/$model" --epochs "$epochs" --device cuda --log "$out/train_$model.log" &
    done
    wait
    for model in paper torchvision; do  # an interrupted run keeps its history in the checkpoint
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
