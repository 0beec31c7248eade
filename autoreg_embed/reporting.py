"""Loss curves of a finished run: a text table for the terminal and a PNG plot (when matplotlib is installed)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)


def loss_points(log_history: Iterable[Mapping[str, float]], key: str = "loss") -> list[tuple[int, float]]:
    """(step, value) pairs of ``key`` from a Trainer's ``state.log_history``."""
    return [(int(entry["step"]), float(entry[key])) for entry in log_history if key in entry and "step" in entry]


def format_loss_curve(log_history: Iterable[Mapping[str, float]]) -> str:
    """A two-column text table of the training (and evaluation) loss by step."""
    history = list(log_history)
    lines = ["step  train_loss  eval_loss"]
    evals = dict(loss_points(history, "eval_loss"))
    for step, loss in loss_points(history):
        eval_loss = evals.get(step)
        lines.append(f"{step:>4}  {loss:>10.4f}  {'' if eval_loss is None else f'{eval_loss:>9.4f}'}")
    return "\n".join(lines)


def plot_loss_curve(log_history: Iterable[Mapping[str, float]], path: str | Path, title: str = "") -> Path | None:
    """Save the loss curve as a PNG; returns the path, or ``None`` without matplotlib or logged losses."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed; skipping the loss plot (pip install 'autoreg-embed[plot]').")
        return None
    history = list(log_history)
    curves = {label: loss_points(history, key) for key, label in (("loss", "train"), ("eval_loss", "eval"))}
    if not any(curves.values()):
        logger.info("No loss was logged (fewer steps than logging_steps); skipping the loss plot.")
        return None
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
    axis.set_xlabel("optimisation step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    path = Path(path)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
