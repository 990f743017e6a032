"""A resumed run's log.jsonl: the steps trained again after the checkpoint are listed once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pg_vla.training.trainer import _truncate_log

ROOT = Path(__file__).resolve().parents[1]


def test_truncate_log_keeps_records_up_to_the_step(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 0, "val_loss": 1.5}\n'
                   '{"step": 1, "loss": 0.9}\n'
                   '{"event": "note"}\n'
                   '{"step": 2, "loss": 0.8}\n'
                   '{"step": 3, "loss": 0.7}\n'
                   '{"step": 4, "lo')  # cut off by a crash
    _truncate_log(log, 2)
    assert log.read_text() == ('{"step": 0, "val_loss": 1.5}\n'
                               '{"step": 1, "loss": 0.9}\n'
                               '{"event": "note"}\n'
                               '{"step": 2, "loss": 0.8}\n')
    _truncate_log(log, 2)  # nothing to drop: unchanged
    assert log.read_text().count("\n") == 4
    _truncate_log(tmp_path / "missing.jsonl", 2)  # no log yet: nothing to do
    assert not (tmp_path / "missing.jsonl").exists()


@pytest.mark.slow
def test_resumed_run_logs_each_step_once(tmp_path):
    """Train 4 steps saving at 2 and 4; lose checkpoint 4 (as if killed after logging step 4 but before
    saving it); run again to 4: it resumes from 2, trains 3 and 4 again, and the log lists each step once."""
    run = tmp_path / "run"
    args = [sys.executable, "scripts/run.py", "--config-name=quickstart", f"log_dir={run}", "n_updates=4",
            "save_every=2", "log_every=1", "quickstart.episodes=4", "quickstart.image_size=32",
            "global_batch_size=2", "per_device_batch_size=2", "schedule.warmup_steps=1"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "VLA_CACHE_DIR": str(tmp_path / "cache")}
    first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-4000:]
    checkpoints = run / "checkpoints"
    shutil.rmtree(checkpoints / "step_000004")
    (checkpoints / "latest").write_text("step_000002\n")
    first_losses = {r["step"]: r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
                    if "loss" in r}
    assert sorted(first_losses) == [1, 2, 3, 4]

    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr[-4000:]
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [(r["event"], r["step"]) for r in records if "event" in r] == [("resumed", 2)]
    # the steps trained again are the same steps (exact resume), so the kept records are what they were
    assert {r["step"]: r["loss"] for r in records if "loss" in r} == first_losses
