"""Plot readout-gain and mean-cosine curves of stage1_lab.py runs; print them as a table.

    python examples/research/plot_curves.py runs/issue14/r01_base runs/issue14/r02_bos --out curves.png \
        [--eval_set ae] [--x train_seconds]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def eval_points(run: Path, eval_set: str, x: str) -> list[tuple[float, float, float, float]]:
    """(x, readout gain, mean cosine, loss) of every evaluation of ``eval_set`` in a run's curve.jsonl."""
    points = []
    for line in (run / "curve.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if f"{eval_set}/readout_gain" in entry:
            points.append(
                (
                    entry[x],
                    entry[f"{eval_set}/readout_gain"],
                    entry[f"{eval_set}/embeddings/mean_cosine"],
                    entry[f"{eval_set}/ce"] if f"{eval_set}/ce" in entry else entry[f"{eval_set}/loss"],
                )
            )
    return points


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", default=None)
    parser.add_argument("--eval_set", default="ae")
    parser.add_argument("--x", default="step", choices=["step", "train_seconds"])
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    curves = {Path(run).name: eval_points(Path(run), args.eval_set, args.x) for run in args.runs}
    for name, points in curves.items():
        print(f"{name}: " + "  ".join(f"{x:g}: {g:+.3f}/{c:.3f}/{lo:.2f}" for x, g, c, lo in points))
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 3, figsize=(15, 4))
        for name, points in curves.items():
            xs = [p[0] for p in points]
            for axis, index in zip(axes, (1, 2, 3), strict=True):
                axis.plot(xs, [p[index] for p in points], marker=".", label=name)
        label = "training seconds (core 1)" if args.x == "train_seconds" else "optimisation step"
        axes[0].axhline(1.0, color="gray", linestyle="--", linewidth=0.8)
        axes[0].set(xlabel=label, ylabel=f"held-out readout gain ({args.eval_set}), nats/token")
        axes[1].set(xlabel=label, ylabel="mean pairwise embedding cosine")
        axes[2].set(xlabel=label, ylabel="held-out cross-entropy, nats/token")
        axes[0].legend(fontsize=7)
        if args.title:
            figure.suptitle(args.title)
        figure.tight_layout()
        figure.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
