"""Checkpoints record the transforms training applied (inference.json), and Policy applies and inverts exactly
those: the Parquet loader's gripper_dims mask from a real (in-process) run, a record that differs from what the
run config would give, and refusals of broken records; checkpoints without a record still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import edited_copy, tiny_train_config
from pg_vla.checkpoint_folder import INFERENCE_FILE, read_inference_record
from pg_vla.model.paligemma.loading import CheckpointError
from pg_vla.policy import Policy


def test_a_parquet_run_records_and_serves_its_gripper_dims_mask(
    tiny_episodes: Path, tiny_checkpoint_dir: Path, tmp_path: Path
) -> None:
    """gripper_dims=2 on 3-D actions: the loader normalizes only the first dim; the record says so, and the
    Policy de-normalizes with it (the last two dims in robot units, clipped to the statistics' range)."""
    from pg_vla.data.parquet import ParquetConfig
    from pg_vla.data.parquet.loader import ParquetBatches, ParquetSource
    from pg_vla.data.parquet.statistics import load_or_compute_statistics
    from pg_vla.training.trainer import Trainer

    data = {
        "source": "parquet",
        "paths": [str(tiny_episodes / "train")],
        "num_workers": 0,
        "shuffle_buffer": 4,
        "gripper_dims": 2,
        "normalization": "mean_std",
        "image_resize": "pad",
    }
    Trainer(tiny_train_config(tiny_episodes, tiny_checkpoint_dir, tmp_path / "run", n_updates=1, data=data)).run()
    checkpoint = tmp_path / "run" / "checkpoints" / "step_000001"
    record = read_inference_record(checkpoint)
    assert record is not None and record.source == "parquet" and record.camera_roles == ("primary",)
    assert (record.image_resize, record.normalization) == ("pad", "mean_std")
    transforms = record.datasets["parquet"]
    assert transforms.action_mask == (True, False, False) and (transforms.proprio_dim, transforms.action_dim) == (3, 3)

    cfg = ParquetConfig(paths=(str(tiny_episodes / "train"),), gripper_dims=2, normalization="mean_std")
    source = ParquetSource.open(cfg)
    stats, path = load_or_compute_statistics(cfg, source.files, source.indexes, source.plans)
    loader_mask = ParquetBatches(cfg, source, stats, path).reader().action_norm.mask
    assert loader_mask.tolist() == [True, False, False]  # what training normalized

    policy = Policy.from_checkpoint(checkpoint)
    assert policy.action_normalizer.mask.tolist() == [True, False, False]
    assert policy.processor.image_resize == "pad" and policy.action_normalizer.mode == "mean_std"
    image = np.zeros((20, 30, 3), np.uint8)
    from pg_vla.policy import Observation

    out = policy.infer(Observation(images={"primary": image}, state=np.zeros(3), prompt="push"), seed=0)
    y = out["normalized_actions"].astype(np.float64)
    by_hand = np.concatenate(
        [
            y[:, :1] * (stats.action.std[:1] + 1e-6) + stats.action.mean[:1],
            np.clip(y[:, 1:], stats.action.min[1:], stats.action.max[1:]),
        ],
        axis=1,
    )
    np.testing.assert_allclose(out["actions"], by_hand, rtol=1e-5, atol=1e-5)

    # offline evaluation of that checkpoint: its ground truth, normalized by the loader and de-normalized by
    # the policy, comes back as the raw actions of the Parquet files (the masks agree)
    import csv

    import pyarrow.parquet as pq

    from pg_vla.eval.offline import PREDICTIONS_FILE, OfflineEvalConfig, run

    run(
        OfflineEvalConfig(
            checkpoint_path=str(checkpoint),
            eval_data_path=[str(tiny_episodes / "val")],
            output_dir=str(tmp_path / "eval"),
            device="cpu",
            num_workers=0,
            save_predictions=True,
            plot_episodes=0,
        )
    )
    table = pq.read_table(sorted((tiny_episodes / "val").glob("*.parquet"))[0]).to_pydict()
    raw = {(str(e), t): a for e, t, a in zip(table["episode_id"], _steps(table["is_first"]), table["action"])}
    with open(tmp_path / "eval" / PREDICTIONS_FILE) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(raw)
    for row in rows:
        true = [float(row[f"true_h0_d{d}"]) for d in range(3)]
        np.testing.assert_allclose(true, raw[(row["episode_id"], int(row["step"]))], rtol=1e-5, atol=1e-6)


def _steps(is_first: list[bool]) -> list[int]:
    out, t = [], 0
    for first in is_first:
        t = 0 if first else t + 1
        out.append(t)
    return out


def _record(checkpoint: Path) -> dict:
    return json.loads((checkpoint / INFERENCE_FILE).read_text())


@pytest.fixture(scope="module")
def recorded(tiny_policy_checkpoint: Path, tmp_path_factory) -> Path:
    """The tiny bridge policy with the record a bridge run writes (its checkpoint is built without one)."""
    from pg_vla.checkpoint_folder import write_inference_record
    from pg_vla.data.normalization import DatasetStatistics
    from pg_vla.data.sources import inference_record

    folder = edited_copy(tiny_policy_checkpoint, tmp_path_factory.mktemp("recorded") / "step_000001")
    stats = DatasetStatistics.load(folder / "statistics" / "bridge_dataset.json")
    write_inference_record(folder, inference_record({"mix": "bridge"}, {"bridge_dataset": stats}, 32))
    return folder


def test_the_record_of_a_bridge_run(recorded: Path) -> None:
    record = _record(recorded)
    assert record["datasets"]["bridge_dataset"] == {
        "proprio_dim": 7,
        "action_dim": 7,
        "action_mask": [True] * 6 + [False],
        "proprio_mask": None,
        "gripper_convention": "absolute: 1 open, 0 closed",
    }
    assert (record["source"], record["normalization"], record["image_resize"]) == ("rlds", "bounds", "stretch")


def test_policy_follows_the_record_not_the_run_config(recorded: Path, tmp_path: Path) -> None:
    """A record whose mask and resize mode differ from what config.json would give: the record wins."""
    folder = Path(shutil.copytree(recorded, tmp_path / "step_000001"))  # no manifest: edits are allowed
    record = _record(folder)
    record["datasets"]["bridge_dataset"]["action_mask"] = [True, False, True, True, True, True, True]
    record["image_resize"] = "pad"
    (folder / INFERENCE_FILE).write_text(json.dumps(record))
    policy = Policy.from_checkpoint(folder)
    assert policy.action_normalizer.mask.tolist() == [True, False, True, True, True, True, True]
    assert policy.processor.image_resize == "pad"


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda r: r.update(format="other"), "inference.json is malformed: not an inference record"),
        (lambda r: r["datasets"]["bridge_dataset"].update(action_mask=[True] * 3), "action_mask has 3 entries for 7"),
        (
            lambda r: r["datasets"]["bridge_dataset"].update(action_dim=6, action_mask=[True] * 6),
            "records 7-D state and 6-D actions for bridge_dataset, its statistics 7 / 7",
        ),
        (lambda r: r.update(datasets={}), "records no transforms of bridge_dataset"),
        (lambda r: r.update(image_size=64), "records image size 64, the model reads 32"),
    ],
)
def test_a_broken_record_is_refused_naming_it(recorded: Path, tmp_path: Path, edit, message: str) -> None:
    folder = Path(shutil.copytree(recorded, tmp_path / "step_000001"))  # no manifest: edits are allowed
    record = _record(folder)
    edit(record)
    (folder / INFERENCE_FILE).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=message):
        Policy.from_checkpoint(folder)


def test_checkpoints_without_a_record_load_from_their_run_config(tiny_policy_checkpoint: Path) -> None:
    assert not (tiny_policy_checkpoint / INFERENCE_FILE).exists()
    policy = Policy.from_checkpoint(tiny_policy_checkpoint)
    assert policy.action_normalizer.mask.tolist() == [True] * 6 + [False]  # bridge's gripper kept
