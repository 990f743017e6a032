"""The run's loss_curve.png: training and validation loss, and validation accuracy, against the step.

Left panel: the training loss of every optimizer step (faint), its running mean, and the validation
loss at each validation (markers), on a log scale. Right panel (when the run validated): the
fraction of validation chunks within each threshold (`val_accuracy@th`, see
`pg_vla.training.validation`). Validation points come from the run's log.jsonl, so a resumed run's
plot shows the validations before the resume too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

_ACCURACY = re.compile(r"^val_accuracy@(.+)$")


def validation_points(log_path: Path) -> tuple[list[tuple[int, float]], dict[str, list[tuple[int, float]]]]:
    """log.jsonl -> ([(step, val_loss)], {threshold: [(step, accuracy)]}), the last record of a step winning."""
    by_step: dict[int, dict] = {}
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash
                continue
            if isinstance(record, dict) and "val_loss" in record and "step" in record:
                by_step[int(record["step"])] = record
    losses = [(step, float(r["val_loss"])) for step, r in sorted(by_step.items()) if r["val_loss"] is not None]
    accuracy: dict[str, list[tuple[int, float]]] = {}
    for step, record in sorted(by_step.items()):
        for key, value in record.items():
            match = _ACCURACY.match(key)
            if match and value is not None:
                accuracy.setdefault(match.group(1), []).append((step, float(value)))
    return losses, accuracy


def plot_loss_curve(train_losses: Sequence[tuple[int, float]], log_path: Path, path: Path) -> Path:
    """Write the figure described in the module docstring to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val_losses, accuracy = validation_points(log_path)
    panels = 2 if accuracy else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.0 * panels, 3.8), squeeze=False)
    ax = axes[0][0]
    if train_losses:
        steps, values = [s for s, _ in train_losses], [v for _, v in train_losses]
        window = max(1, min(50, len(values) // 10))  # per-step losses are noisy (random flow times)
        smooth = [
            sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))
        ]
        ax.plot(steps, values, alpha=0.3, linewidth=0.8, label="training loss (per step)")
        ax.plot(steps, smooth, label=f"training loss (mean of last {window})")
    if val_losses:
        ax.plot([s for s, _ in val_losses], [v for _, v in val_losses], "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (log scale)")
    ax.set_yscale("log")
    ax.set_title("loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if accuracy:
        ax = axes[0][1]
        for threshold, points in sorted(accuracy.items(), key=lambda item: float(item[0])):
            ax.plot([s for s, _ in points], [v for _, v in points], "o-", label=f"within {threshold}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("fraction of validation chunks")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("validation accuracy (every step and dimension within the threshold)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, title="normalized units", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
