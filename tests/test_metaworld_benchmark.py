"""The Meta-World benchmark report (pg_vla.eval.metaworld.benchmark) on hand-written step outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pg_vla.eval.metaworld import BENCHMARK_TASKS, MT10_TASKS, TASKS
from pg_vla.eval.metaworld.benchmark import collect, main


def _summary(per_task: dict[str, float], episodes: int = 4, **extra) -> dict:
    return {
        "per_task": per_task,
        "mean": sum(per_task.values()) / len(per_task),
        "n_eval_episode": episodes,
        "eval_seed_start": 100000,
        "seconds": 12.5,
        **extra,
    }


def _write(folder: Path, name: str, data: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data))


def test_report_of_a_benchmark_folder(tmp_path: Path):
    _write(tmp_path / "eval_checkpoint", "summary.json", _summary({"reach-v3": 0.75, "push-v3": 0.5}, act_steps=1))
    _write(tmp_path / "eval_zero", "summary.json", _summary({"reach-v3": 0.0, "push-v3": 0.0}))
    _write(tmp_path / "eval_expert", "summary.json", _summary({"reach-v3": 1.0, "push-v3": 1.0}))
    demos = {"episodes": 3, "per_task": {"reach-v3": 2, "push-v3": 1}, "failed": ["push-v3:1"], "steps": 99,
             "seconds": 4.0, "path": "x"}  # fmt: skip
    _write(tmp_path, "demos.json", demos)
    log = [{"step": 50, "loss": 0.3}, {"step": 100, "loss": 0.2, "val_loss": 0.25}, {"step": 120, "loss": 0.1}]
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")

    result = main([str(tmp_path), "--train_seconds", "60", "--eval_seconds", "30"])

    assert result == json.loads((tmp_path / "benchmark.json").read_text())
    assert result["tasks"] == ["reach-v3", "push-v3"]
    assert result["training"] == {"steps": 120, "seconds": 60.0, "steps_per_s": 2.0, "last_val_loss": 0.25}
    assert result["demonstrations"]["failed"] == ["push-v3:1"] and "path" not in result["demonstrations"]
    checkpoint = result["policies"]["checkpoint"]
    assert checkpoint["mean"] == 0.625 and checkpoint["eval_seeds"] == [100000, 100003]
    assert checkpoint["act_steps"] == 1 and checkpoint["episodes_per_task"] == 4
    table = (tmp_path / "benchmark.md").read_text().splitlines()
    assert table[0] == "| policy | reach | push | mean | episodes per task |"
    assert table[2] == "| pi0 small (trained here) | 75% | 50% | 62.5% | 4 |"  # the checkpoint first
    assert table[3].startswith("| expert") and table[4] == "| zero action | 0% | 0% | 0.0% | 4 |"


def test_missing_steps_are_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no eval_<policy>/summary.json"):
        collect(tmp_path)
    (tmp_path / "eval_zero").mkdir()
    with pytest.raises(FileNotFoundError, match="eval_zero/summary.json is missing"):
        collect(tmp_path)
    (tmp_path / "eval_zero" / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        collect(tmp_path)


def test_task_lists():
    assert len(MT10_TASKS) == 10 and len(set(MT10_TASKS)) == 10
    assert set(BENCHMARK_TASKS) | set(MT10_TASKS) <= set(TASKS)
    pytest.importorskip("metaworld")
    from metaworld import policies
    from metaworld.env_dict import MT10_V3

    assert list(MT10_TASKS) == list(MT10_V3)  # Meta-World's own MT10 list, in its order
    for name in TASKS:
        assert hasattr(policies, TASKS[name].expert), name
