"""End to end on CPU: scripted demonstrations -> RLDS -> a few training steps -> closed-loop evaluation.

Every stage runs as its own command (demonstrations render in spawned workers; evaluation never
imports tensorflow), as a user would run them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaworld_subprocess import run_script


def test_demos_train_evaluate(tmp_path: Path, tiny_checkpoint_dir: Path):
    pytest.importorskip("metaworld")
    data, run, evaluation = tmp_path / "data", tmp_path / "run", tmp_path / "eval"

    proc = run_script(
        [
            "scripts/data/make_metaworld_demos.py",
            "--output_dir",
            str(data),
            "--tasks",
            "reach-v3",
            "--episodes_per_task",
            "2",
            "--val_episodes_per_task",
            "1",
            "--workers",
            "1",
            "--num_shards",
            "1",
        ]
    )
    demos = json.loads(proc.stdout.strip().splitlines()[-1])
    assert demos["episodes"] == 2 and demos["failed"] == []  # the expert solves reach from every seed
    assert (data / "metaworld" / "1.0.0" / "dataset_info.json").is_file()

    run_script(
        [
            "scripts/run.py",
            "--config-name=metaworld",
            f"data.data_path={data}",
            f"pretrained_model_path={tiny_checkpoint_dir}",
            f"metaworld.cache_dir={tmp_path / 'cache'}",
            "n_updates=2",
            "global_batch_size=4",
            "per_device_batch_size=4",
            "schedule.warmup_steps=1",
            "averaging.kind=none",
            "save_every=2",
            "log_every=1",
            "data.shuffle_buffer=50",
            "validation.every=null",
            f"log_dir={run}",
        ]
    )
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [r["step"] for r in log] == [1, 2]
    assert not (tmp_path / "cache").exists()  # given data and model: nothing generated

    run_script(
        [
            "scripts/run.py",
            "--config-path=../config/eval",
            "--config-name=metaworld",
            "policy=checkpoint",
            f"checkpoint_path={run}",
            "env.tasks=[reach-v3]",
            "n_eval_episode=2",
            "n_video=1",
            "num_envs=2",
            "act_steps=2",
            f"log_dir={evaluation}",
        ]
    )
    episodes = [json.loads(line) for line in (evaluation / "episodes.jsonl").read_text().splitlines()]
    assert sorted(r["seed"] for r in episodes) == [100000, 100001]
    assert all(r["task"] == "reach-v3" and 1 <= r["steps"] <= 200 for r in episodes)
    summary = json.loads((evaluation / "summary.json").read_text())
    assert set(summary["per_task"]) == {"reach-v3"} and 0.0 <= summary["mean"] <= 1.0
    first = next(r for r in episodes if r["seed"] == 100000)
    outcome = "success" if first["success"] else "failure"
    videos = list((evaluation / "videos").iterdir())
    assert [v.stem for v in videos] == [f"reach-v3_seed100000_{outcome}"] and videos[0].stat().st_size > 0
    assert (evaluation / "success.png").is_file()
