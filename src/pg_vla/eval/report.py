"""Evaluation outputs: per-episode JSONL, summary JSON, episode videos, success bar chart."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class EpisodeResult:
    task: str
    seed: int
    success: bool
    steps: int
    instruction: str
    # the environment's task measures at the last step (Meta-World: obj_to_target, the distance in metres of
    # the task's object, or of the hand on reach, to the goal; near_object; grasp_success)
    final: dict[str, float] = field(default_factory=dict)


def summarize(results: Sequence[EpisodeResult], tasks: Sequence[str]) -> dict[str, Any]:
    """-> {"per_task": task -> success rate in [0, 1], "mean": mean over tasks, "episodes": task -> count,
    "final_median": task -> {measure -> median over the task's episodes} of the episodes' `final` measures}."""
    per_task, counts, final = {}, {}, {}
    for task in tasks:
        episodes = [r for r in results if r.task == task]
        counts[task] = len(episodes)
        per_task[task] = float(np.mean([r.success for r in episodes])) if episodes else float("nan")
        measures = sorted({key for r in episodes for key in r.final})
        final[task] = {key: float(np.median([r.final[key] for r in episodes if key in r.final])) for key in measures}
    rates = [rate for rate in per_task.values() if not np.isnan(rate)]
    return {
        "per_task": per_task,
        "mean": float(np.mean(rates)) if rates else float("nan"),
        "episodes": counts,
        "final_median": final,
    }


class JsonlWriter:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "w")

    def write(self, result: EpisodeResult) -> None:
        self.file.write(json.dumps(asdict(result)) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _mp4_available() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(name) is not None for name in ("imageio_ffmpeg", "av"))


def write_video(frames: Sequence[np.ndarray], path_stem: Path, fps: int = 20) -> Path:
    """Write frames as `<stem>.mp4` (needs imageio-ffmpeg or PyAV), else as `<stem>.gif`; -> the file."""
    import imageio.v2 as imageio

    path_stem.parent.mkdir(parents=True, exist_ok=True)
    if _mp4_available():
        path = path_stem.with_suffix(".mp4")
        imageio.mimwrite(path, list(frames), fps=fps, macro_block_size=1)
    else:
        warnings.warn("no mp4 encoder (install imageio-ffmpeg or av): writing the video as GIF", stacklevel=2)
        path = path_stem.with_suffix(".gif")
        imageio.mimwrite(path, list(frames), duration=1000.0 / fps, loop=0)
    return path


def plot_success(summary: dict[str, Any], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary["per_task"])
    rates = [100.0 * summary["per_task"][t] for t in tasks]
    fig, ax = plt.subplots(figsize=(1.3 * len(tasks) + 2.5, 3.8))
    bars = ax.bar(tasks, rates, color="tab:blue")
    ax.axhline(100.0 * summary["mean"], color="tab:red", linestyle="--", label=f"mean {100 * summary['mean']:.1f}%")
    for bar, rate in zip(bars, rates):
        ax.text(bar.get_x() + bar.get_width() / 2, rate + 1, f"{rate:.0f}%", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("success rate (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
