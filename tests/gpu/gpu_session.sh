#!/usr/bin/env bash
# One GPU session, prepared to fit a short lease: real images -> archive -> npz, the benchmark, the
# graph-vs-eager check, then both models trained for as many epochs as the time left allows.
#
# usage: tests/gpu/gpu_session.sh JPEG_NPZ ARCHIVE_TOOL OUT_DIR [TOTAL_SECONDS]
#   JPEG_NPZ      the project's shared cifar10-jpeg.npz (real CIFAR-10 images as JPEG)
#   ARCHIVE_TOOL  make_cifar10_archive.py, which turns it into the official archive layout
# Each step runs even if an earlier one failed; what each printed lands in OUT_DIR.
set -u
jpeg=$1 tool=$2 out=$3 total=${4:-520}
start=$(date +%s)
left() { echo $(( total - ($(date +%s) - start) )); }
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
work=$(mktemp -d)
mkdir -p "$out"
exec > >(tee "$out/session.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

python "$tool" "$work/cifar-10-python.tar.gz" --npz "$jpeg"
python -m alexnet_cifar prepare "$work/cifar-10-python.tar.gz" "$work/cifar10.npz"

python -m alexnet_cifar bench --data "$work/cifar10.npz" --models paper,torchvision --steps 400 \
    --warmup 50 --device cuda --loops plain,engine,engine-eager,engine+bf16+channels_last --out "$out" \
    || echo "BENCH FAILED"

python tests/gpu/check_graph_vs_eager.py --data "$work/cifar10.npz" --epochs 2 --limit-train 10000 \
    --out "$out/graph_vs_eager.json" || echo "CHECK FAILED (exit $?)"

# Both trainings at once (one GPU, time-sliced): epochs are slower than alone, the curves the same.
budget=$(( $(left) - 25 ))
echo "training both models for ${budget}s"
for model in paper torchvision; do
    timeout -s TERM "$budget" python -m alexnet_cifar train --data "$work/cifar10.npz" --model "$model" \
        --out "$work/$model" --epochs 20 --device cuda --log "$out/train_$model.log" &
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
echo "session took $(( $(date +%s) - start ))s"
