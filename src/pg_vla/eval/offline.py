"""Offline evaluation: a checkpoint's predicted action chunks against recorded episodes.

    uv run scripts/eval_offline.py --checkpoint_path CKPT --eval_data_path A.parquet B.parquet --output_dir DIR
    uv run scripts/eval_offline.py --checkpoint_path CKPT --eval_data_path RLDS_DIR --mix bridge --split val ...

The data is read in one ordered pass (`pg_vla.data.sources.make_loader`), normalized with the
checkpoint's own statistics JSON, and the model predicts every sample's chunk with `sample_actions`
(flow noise drawn from a generator seeded with `seed`, so runs repeat exactly); the discrete head
predicts the decoded bins of `bin_logits`, which is what its `sample_actions` returns. Predictions
and truths are compared over the dataset's action dimensions and the valid chunk steps
(`pg_vla.eval.metrics`). Outputs in `output_dir`:

    metrics.json       the metrics of `ActionMetrics` plus what was evaluated (checkpoint, head, data, seed)
    predictions.csv    with save_predictions: one row per sample (columns below)
    trajectories.png   predicted vs true actions (first chunk step of each sample, original units) over
                       the steps of the first `plot_episodes` episodes, one subplot per action dimension

predictions.csv columns: sample, episode_id, step, valid_h{h} (0/1) for each chunk step h, then for
each h and dimension d: true_norm_h{h}_d{d}, pred_norm_h{h}_d{d}, true_h{h}_d{d}, pred_h{h}_d{d}
(original units) and, for the discrete head, true_bin_h{h}_d{d}, pred_bin_h{h}_d{d}. Floats are
written with full precision (repr), so the metrics can be recomputed from the file.

Nothing here imports tensorflow (the RLDS loader runs it in a spawned worker process).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pg_vla.eval.metrics import DEFAULT_THRESHOLDS, ActionMetrics
from pg_vla.policy import Policy, resolve_checkpoint_folder
from pg_vla.utils.devices import resolve_device

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
PLOT_FILE = "trajectories.png"
# Run-config data keys that describe the data of a checkpoint but not where it is (carried to the eval data).
_NOT_CARRIED = {
    "source",
    "paths",
    "val_paths",
    "path",
    "val_path",
    "weights",
    "data_path",
    "split",
    "train",
    "statistics_path",
    "statistics_dir",
    "statistics_paths",
    "batch_size",
    "image_size",
    "cond_steps",
    "horizon_steps",
    "seed",
    "mix",
    "dataset_name",
    "num_workers",
}


@dataclass
class OfflineEvalConfig:
    checkpoint_path: str  # a checkpoint folder, a run's checkpoints/ folder or its log_dir
    eval_data_path: Sequence[str]  # Parquet files/globs/folders, or one RLDS data folder
    output_dir: str
    source: str = "auto"  # parquet | rlds | lerobot | auto (see detect_source)
    dataset_name: str | None = None  # statistics of the checkpoint to use (needed when it has several)
    mix: str | None = None  # RLDS: a mix of that one dataset (default: the run's mix, else one named after it)
    split: str = "val"  # RLDS split
    batch_size: int = 16
    max_batches: int | None = None
    seed: int = 0
    save_predictions: bool = False
    device: str = "auto"  # auto: cuda when available
    dtype: str | None = None  # float32 (default) or bfloat16
    num_workers: int = 1  # Parquet reader processes (0: in this process)
    plot_episodes: int = 3
    verify: bool = True  # check the checkpoint against its manifest.json first
    thresholds: tuple[float, ...] = field(default=DEFAULT_THRESHOLDS)

    def __post_init__(self) -> None:
        self.eval_data_path = [
            str(p) for p in ([self.eval_data_path] if isinstance(self.eval_data_path, str) else self.eval_data_path)
        ]
        if not self.eval_data_path:
            raise ValueError("eval_data_path is empty: give Parquet files or an RLDS data folder")
        if self.source not in ("auto", *SOURCES):
            raise ValueError(f"source must be auto, parquet, rlds or lerobot, got {self.source!r}")
        if self.batch_size < 1 or (self.max_batches is not None and self.max_batches < 1):
            raise ValueError("batch_size and max_batches must be >= 1")
        if self.plot_episodes < 0 or self.num_workers < 0:
            raise ValueError("plot_episodes and num_workers must be >= 0")


# ---- data ---------------------------------------------------------------------------------------------
SOURCES = ("parquet", "rlds", "lerobot")


def detect_source(paths: Sequence[str]) -> str:
    """lerobot when every path is a LeRobot dataset folder (meta/info.json); parquet when every path is a
    .parquet file, a glob or a folder holding .parquet files; else rlds."""
    if all((Path(p) / "meta" / "info.json").is_file() for p in paths):
        return "lerobot"

    def is_parquet(path: str) -> bool:
        p = Path(path)
        if any(c in path for c in "*?["):
            return True
        return p.suffix == ".parquet" or (p.is_dir() and next(p.rglob("*.parquet"), None) is not None)

    return "parquet" if all(is_parquet(p) for p in paths) else "rlds"


def data_config(cfg: OfflineEvalConfig, policy: Policy, checkpoint: Path) -> dict[str, Any]:
    """The `make_loader` data dict: the eval data, read in order, normalized with the checkpoint's statistics."""
    from pg_vla.checkpoint_folder import CONFIG_FILE, STATISTICS_DIR

    run_data = json.loads((checkpoint / CONFIG_FILE).read_text()).get("data", {})
    statistics = str(checkpoint / STATISTICS_DIR / f"{policy.dataset_name}.json")
    source = detect_source(cfg.eval_data_path) if cfg.source == "auto" else cfg.source
    if source == "lerobot":
        from pg_vla.data.lerobot import LeRobotConfig

        if len(cfg.eval_data_path) != 1:
            raise ValueError(f"LeRobot evaluation reads one dataset folder, got {list(cfg.eval_data_path)}")
        keep = {f.name for f in dataclasses.fields(LeRobotConfig)} - _NOT_CARRIED
        carried = {k: v for k, v in run_data.items() if k in keep}
        return {
            **carried,
            "source": "lerobot",
            "path": list(cfg.eval_data_path),
            "train": False,
            "statistics_path": statistics,
            "num_workers": cfg.num_workers,
        }
    if source == "parquet":
        from pg_vla.data.parquet import ParquetConfig

        keep = {f.name for f in dataclasses.fields(ParquetConfig)} - _NOT_CARRIED
        carried = {k: v for k, v in run_data.items() if k in keep}
        return {
            **carried,
            "source": "parquet",
            "paths": list(cfg.eval_data_path),
            "train": False,
            "dataset_name": policy.dataset_name,
            "statistics_path": statistics,
            "num_workers": cfg.num_workers,
        }
    from pg_vla.data.rlds.config import RLDSConfig
    from pg_vla.data.rlds.dataset_configs import MIXES

    if len(cfg.eval_data_path) != 1 or not Path(cfg.eval_data_path[0]).is_dir():
        raise ValueError(f"RLDS evaluation reads one data folder, got {list(cfg.eval_data_path)}")
    mix = cfg.mix or run_data.get("mix")
    if mix is None or set(MIXES.get(mix, {})) != {policy.dataset_name}:
        single = [name for name, weights in MIXES.items() if set(weights) == {policy.dataset_name}]
        if cfg.mix is not None or not single:
            raise ValueError(
                f"RLDS evaluation needs a mix holding only {policy.dataset_name!r} (the statistics it "
                f"is de-normalized with); got {mix!r}. Mixes: {sorted(MIXES)}"
            )
        mix = single[0]
    keep = {f.name for f in dataclasses.fields(RLDSConfig)} - _NOT_CARRIED - {"augment", "deterministic"}
    carried = {k: v for k, v in run_data.items() if k in keep}
    return {
        **carried,
        "source": "rlds",
        "data_path": cfg.eval_data_path[0],
        "mix": mix,
        "split": cfg.split,
        "train": False,
        "statistics_paths": {policy.dataset_name: statistics},
    }


# ---- prediction ---------------------------------------------------------------------------------------
@dataclass
class BatchResult:
    """One batch, over the dataset's A action dimensions (B batch, H horizon)."""

    episode_ids: list[str]
    steps: np.ndarray  # (B,) int
    mask: np.ndarray  # (B, H) bool
    true: np.ndarray  # (B, H, A) normalized
    pred: np.ndarray  # (B, H, A) normalized
    true_original: np.ndarray  # (B, H, A) robot units
    pred_original: np.ndarray  # (B, H, A) robot units
    true_bins: np.ndarray | None = None  # (B, H, A) discrete head
    pred_bins: np.ndarray | None = None


@torch.no_grad()
def predict_batch(policy: Policy, batch: dict[str, Any], generator: torch.Generator) -> BatchResult:
    """Run the model on one loader batch; de-normalize truth and prediction with the policy's statistics."""
    model, cfg = policy.model, policy.config
    text = policy.processor.tokenize(list(batch["language"]))
    images = policy.processor.preprocess_images(torch.as_tensor(batch["images"]))  # (B, C*N, 3, S, S)
    proprio = torch.as_tensor(batch["proprio"], dtype=torch.float32)  # (B, C, P_data)
    if proprio.shape[-1] > cfg.proprio_dim:
        raise ValueError(f"the data's proprio has {proprio.shape[-1]} values, the model reads {cfg.proprio_dim}")
    proprio = torch.nn.functional.pad(proprio, (0, cfg.proprio_dim - proprio.shape[-1]))  # zero-padded as Policy
    inputs = {
        "images": images.to(policy.device, policy.dtype),
        "image_mask": torch.as_tensor(batch["image_mask"], dtype=torch.bool).to(policy.device),  # (B, C*N)
        "text_ids": text["input_ids"].to(policy.device),
        "text_mask": text["attention_mask"].to(policy.device),
        "proprio": proprio.to(policy.device),
    }
    a = policy.action_dim
    true = torch.as_tensor(batch["actions"], dtype=torch.float32)[..., :a]  # (B, H, A)
    b = true.shape[0]
    true_bins = pred_bins = None
    if model.is_discrete:
        logits = model.bin_logits(**inputs)[:, :, :a]  # (B, H, A, K)
        pred = model.decode_bin_logits(logits)
        pred_bins = logits.argmax(dim=-1).cpu().numpy()
        true_bins = model.action_bins(true).numpy()
    else:
        noise = torch.randn((b, cfg.horizon_steps, cfg.action_dim), generator=generator)
        pred = model.sample_actions(**inputs, noise=noise.to(policy.device), num_steps=policy.num_steps)[..., :a]
    pred_np = pred.float().cpu().numpy()
    true_np = true.numpy()
    unnormalize = policy.action_normalizer.unnormalize
    return BatchResult(
        episode_ids=[str(e) for e in batch["tfds_id"]],
        steps=np.asarray(batch["step"]).astype(int),
        mask=np.asarray(batch["action_mask"]).astype(bool),
        true=true_np,
        pred=pred_np,
        true_original=unnormalize(true_np.astype(np.float64)),
        pred_original=unnormalize(pred_np.astype(np.float64)),
        true_bins=true_bins,
        pred_bins=pred_bins,
    )


# ---- outputs ------------------------------------------------------------------------------------------
def prediction_columns(horizon: int, action_dim: int, binned: bool) -> list[str]:
    columns = ["sample", "episode_id", "step", *(f"valid_h{h}" for h in range(horizon))]
    kinds = ("true_norm", "pred_norm", "true", "pred") + (("true_bin", "pred_bin") if binned else ())
    columns += [f"{kind}_h{h}_d{d}" for h in range(horizon) for d in range(action_dim) for kind in kinds]
    return columns


def prediction_rows(result: BatchResult, first_index: int) -> Iterator[list[Any]]:
    """The CSV rows of one batch (see `prediction_columns`)."""
    b, h, a = result.true.shape
    binned = result.true_bins is not None
    for i in range(b):
        row: list[Any] = [
            first_index + i,
            result.episode_ids[i],
            int(result.steps[i]),
            *(int(v) for v in result.mask[i]),
        ]
        for s in range(h):
            for d in range(a):
                row += [
                    repr(float(result.true[i, s, d])),
                    repr(float(result.pred[i, s, d])),
                    repr(float(result.true_original[i, s, d])),
                    repr(float(result.pred_original[i, s, d])),
                ]
                if binned:
                    row += [int(result.true_bins[i, s, d]), int(result.pred_bins[i, s, d])]  # type: ignore[index]
        yield row


class TrajectoryRecorder:
    """First chunk step (original units) of every sample of the first `max_episodes` episodes."""

    def __init__(self, max_episodes: int):
        self.max_episodes = max_episodes
        self.episodes: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}  # id -> [(step, true, pred)]

    def add(self, result: BatchResult) -> None:
        for i, episode in enumerate(result.episode_ids):
            if episode not in self.episodes and len(self.episodes) >= self.max_episodes:
                continue
            self.episodes.setdefault(episode, []).append(
                (int(result.steps[i]), result.true_original[i, 0], result.pred_original[i, 0])
            )

    def plot(self, path: Path, dimension_names: Sequence[str] | None = None) -> Path | None:
        if not self.episodes:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        a = len(next(iter(self.episodes.values()))[0][1])
        names = list(dimension_names) if dimension_names else [f"dim {d}" for d in range(a)]
        cols = min(a, 4)
        rows = -(-a // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for e, (episode, samples) in enumerate(self.episodes.items()):
            samples = sorted(samples, key=lambda s: s[0])
            steps = [s[0] for s in samples]
            true, pred = np.stack([s[1] for s in samples]), np.stack([s[2] for s in samples])  # (T, A)
            color = colors[e % len(colors)]
            for d in range(a):
                ax = axes[d // cols][d % cols]
                ax.plot(steps, true[:, d], color=color, label=f"{episode} true" if d == 0 else None)
                ax.plot(steps, pred[:, d], color=color, linestyle="--", label=f"{episode} pred" if d == 0 else None)
        for d in range(rows * cols):
            ax = axes[d // cols][d % cols]
            if d >= a:
                ax.axis("off")
                continue
            ax.set_title(names[d], fontsize=9)
            ax.set_xlabel("step", fontsize=8)
        fig.legend(loc="lower center", ncol=min(2 * len(self.episodes), 6), fontsize=7)
        fig.suptitle("predicted (dashed) vs true (solid) actions, first chunk step")
        fig.tight_layout(rect=(0, 0.08, 1, 0.96))
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


# ---- the whole run ------------------------------------------------------------------------------------
def run(cfg: OfflineEvalConfig) -> dict[str, Any]:
    """Evaluate (see the module docstring); returns the metrics written to metrics.json."""
    from tqdm import tqdm

    from pg_vla.data.sources import make_loader

    checkpoint = resolve_checkpoint_folder(cfg.checkpoint_path, cfg.verify)
    device = resolve_device(cfg.device)
    policy = Policy.from_checkpoint(
        checkpoint, device=device, dtype=cfg.dtype, dataset_name=cfg.dataset_name, verify=False
    )  # checked just above
    model_cfg = policy.config
    data = data_config(cfg, policy, checkpoint)
    loader, _ = make_loader(
        data,
        batch_size=cfg.batch_size,
        image_size=model_cfg.vision.image_size,
        cond_steps=model_cfg.cond_steps,
        horizon_steps=model_cfg.horizon_steps,
        seed=cfg.seed,
        validation=False,
    )
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    binned = policy.model.is_discrete
    metrics = ActionMetrics(policy.action_dim, cfg.thresholds, binned=binned)
    recorder = TrajectoryRecorder(cfg.plot_episodes)
    generator = torch.Generator().manual_seed(cfg.seed)
    batches = 0
    with contextlib.ExitStack() as stack:
        writer = None
        if cfg.save_predictions:
            writer = csv.writer(stack.enter_context(open(output_dir / PREDICTIONS_FILE, "w", newline="")))
            writer.writerow(prediction_columns(model_cfg.horizon_steps, policy.action_dim, binned))
        with tqdm(total=cfg.max_batches, desc="eval", unit="batch", dynamic_ncols=True) as progress:
            for batch in loader:
                result = predict_batch(policy, batch, generator)
                if writer is not None:
                    writer.writerows(prediction_rows(result, metrics.samples))
                metrics.add(
                    result.pred,
                    result.true,
                    result.pred_original,
                    result.true_original,
                    result.mask,
                    result.pred_bins,
                    result.true_bins,
                )
                recorder.add(result)
                batches += 1
                progress.update(1)
                if cfg.max_batches is not None and batches >= cfg.max_batches:
                    break
    del loader  # ends the reader processes
    if batches == 0:
        raise ValueError(f"no samples in {list(cfg.eval_data_path)} (unlabeled episodes are skipped)")
    out: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "action_head": model_cfg.action_head,
        "dataset_name": policy.dataset_name,
        "data_source": data["source"],
        "eval_data_path": list(cfg.eval_data_path),
        "num_batches": batches,
        "seed": cfg.seed,
        "action_dim": policy.action_dim,
        "horizon_steps": model_cfg.horizon_steps,
        "thresholds": list(cfg.thresholds),
        **metrics.compute(),
    }
    if binned:
        out.update(
            num_action_bins=model_cfg.num_action_bins,
            discrete_decoding=model_cfg.discrete_decoding,
            action_bounds=list(model_cfg.action_bounds),
        )
    else:
        out["num_inference_steps"] = policy.num_steps
    (output_dir / METRICS_FILE).write_text(json.dumps(out, indent=2) + "\n")
    recorder.plot(output_dir / PLOT_FILE)
    return out
