"""Stage-1 length against STS and readout: one ``examples/reproduce.py`` seed folder per stage-1 length.

Reads each folder's ``results.json`` (written by ``reproduce.py --compression_epochs E``) and plots, against the
number of stage-1 steps, the STS-B dev Spearman of stage 1 alone and of stage 1 + CDA (paper sign), and the
held-out readout gain after stage 1; prints the same as a Markdown table::

    python examples/research/stage1_length.py runs/s75/seed-0 runs/s100/seed-0 runs/reproduce/seed-0 \
        --out docs/images/stage1_length.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

STAGE1 = "(d) stage 1 only"
WITH_CDA = "(c) stage 1 + CDA, paper reference sign"


def length_point(seed_folder: Path) -> dict[str, float]:
    """Stage-1 steps, STS of stage 1 and of stage 1 + CDA (NaN if not run), readout gain after stage 1."""
    result = json.loads((seed_folder / "results.json").read_text())
    steps = max(entry["step"] for entry in result["logs"]["compression"])
    recipes = result["recipes"]
    return {
        "steps": steps,
        "stage 1": recipes[STAGE1]["spearman"],
        "stage 1 + CDA": recipes[WITH_CDA]["spearman"] if WITH_CDA in recipes else float("nan"),
        "readout gain": result["readout_gain"]["stage 1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("seed_folders", nargs="+", type=Path)
    parser.add_argument("--prompt_baseline", type=float, default=80.84, help="untrained PromptEOL, STS-B dev[:500]")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    points = sorted((length_point(folder) for folder in args.seed_folders), key=lambda point: point["steps"])
    print("| stage-1 steps | STS-B dev, stage 1 | + CDA (paper sign) | readout gain (nats/token) |")
    print("|---|---|---|---|")
    for point in points:
        print(
            f"| {point['steps']} | {point['stage 1']:.2f} | {point['stage 1 + CDA']:.2f} | "
            f"{point['readout gain']:.2f} |"
        )
    if args.out is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [point["steps"] for point in points]
    figure, sts_axis = plt.subplots(figsize=(6, 4))
    for key, marker in (("stage 1", "o"), ("stage 1 + CDA", "s")):
        sts_axis.plot(steps, [point[key] for point in points], marker=marker, label=f"STS-B dev, {key}")
    sts_axis.axhline(args.prompt_baseline, linestyle="--", color="gray", label="PromptEOL (untrained)")
    sts_axis.set(xlabel="stage-1 steps", ylabel="STS-B dev Spearman x100")
    readout_axis = sts_axis.twinx()
    readout_axis.plot(steps, [point["readout gain"] for point in points], color="C3", marker="^", label="readout")
    readout_axis.set_ylabel("held-out readout gain (nats/token)", color="C3")
    handles = sts_axis.get_legend_handles_labels()[0] + readout_axis.get_legend_handles_labels()[0]
    sts_axis.legend(handles=handles, fontsize=8, loc="lower left")
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
