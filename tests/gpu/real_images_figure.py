"""After a GPU session: the real-image runs' histories -> per-epoch CSVs, a figure against the
reported curve over the same epochs, and the markdown table for the README.

Not a pytest test. ``tests/gpu/gpu_session.sh train`` writes ``history_MODEL.json``; then, here:

    python tests/gpu/real_images_figure.py --history paper=OUT/history_paper.json \\
        --history torchvision=OUT/history_torchvision.json --device-tag h100 --out-dir docs

writes ``docs/gpu/h100_real_images_MODEL.csv``, ``docs/real-images-N-epochs-h100.png`` (N: the
most epochs any run reached) and prints the table of test accuracies by epoch.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from alexnet_cifar import metrics, plots

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", action="append", required=True, metavar="RUN=PATH",
                        help="a run's name and its history (JSON list of epoch records); repeatable")
    parser.add_argument("--reference", default=str(REPO / "config/reference/seed_reported_accuracy.csv"))
    parser.add_argument("--device-tag", required=True, help="names the files, e.g. h100")
    parser.add_argument("--out-dir", default=str(REPO / "docs"))
    args = parser.parse_args()

    out = Path(args.out_dir)
    runs, facts = {}, {}
    for item in args.history:
        run, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--history {item!r}: expected RUN=PATH")
        history = json.loads(Path(path).read_text())
        runs[run], facts[run] = metrics.history_frame(history), metrics.run_facts(history)
        metrics.write_csv(runs[run], out / "gpu" / f"{args.device_tag}_real_images_{run}.csv")
    epochs = max(int(frame["epoch"].max()) for frame in runs.values())
    reference = metrics.read_reference(args.reference)
    reference = reference[reference["epoch"] <= epochs]
    png = out / f"real-images-{epochs}-epochs-{args.device_tag}.png"
    plots.plot_comparison(runs, facts, reference, [png], reference_label=f"reported, epochs 1-{epochs}")

    accuracy = {"reported": dict(zip(reference["epoch"], reference["test_acc"], strict=True))}
    accuracy |= {run: dict(zip(frame["epoch"], frame["test_acc"], strict=True)) for run, frame in runs.items()}
    print("| epoch | " + " | ".join(map(str, range(1, epochs + 1))) + " |")
    print("| --- |" + " --- |" * epochs)
    for name, by_epoch in accuracy.items():
        print(f"| {name} | " + " | ".join(f"{by_epoch[e]:.2f}" if e in by_epoch else "" for e in range(1, epochs + 1))
              + " |")
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
