"""The quickstart end to end at tiny sizes (train, validate, evaluate offline, print the next commands), its
generated task (actions follow from instruction, image and state), and the loss plot's validation points."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pg_vla.data.rlds import reach_task
from pg_vla.training.curves import validation_points

ROOT = Path(__file__).resolve().parents[1]
NOISE_MARKERS = (
    "absl::InitializeLog",
    "cudart_stub",
    "cpu_feature_guard",
    "cuInit",
    "To enable the following",
    "CounterV2",
    "is deprecated and will be removed",
)


def _targets(goal_xy, xyz, closed, margin):
    """The task's rule as its docstring states it, written out again: {(target xyz, closed)} for this step.

    `goal_xy` is measured from the image (to about a pixel), so where the hand is within `margin` of a
    switching distance (descend at 2 cm, grasp at 1.2 cm) both outcomes are accepted."""
    grasp = np.array([*goal_xy, 0.01])
    grasp_distance, xy_distance = np.linalg.norm(xyz - grasp), np.linalg.norm(xyz[:2] - goal_xy)
    out = set()
    for now_closed in {closed or grasp_distance < 0.012 + d for d in ((-margin, margin) if not closed else (0,))}:
        if now_closed:
            out.add((tuple(np.array([*goal_xy, 0.12])), True))
            continue
        for descend in {xy_distance < 0.02 + d for d in (-margin, margin)}:
            out.add((tuple(grasp if descend else np.array([*goal_xy, 0.05])), False))
    return out


@pytest.mark.parametrize("index", range(6))
def test_reach_actions_follow_from_instruction_image_and_state(index):
    episode = reach_task.reach_episode("val", index, num_steps=24, image_size=112)
    steps = episode["steps"]
    instruction = steps[0]["language_instruction"]
    color = re.fullmatch(r"reach the (\w+) square", instruction).group(1)
    rgb = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 215), "yellow": (230, 200, 30)}[color]
    # The images show the named square: its pixels (in any frame, as the hand hides part of it at times)
    # are centred where the hand goes.
    frames = np.stack([s["observation"]["image_0"] for s in steps])
    rows, cols = np.nonzero(np.all(frames == rgb, axis=-1).any(axis=0))
    assert len(rows) > 20, f"{color} square not visible"
    size, extent = 112, 0.36  # the module's camera: 0.36 m across, x down the image, y to the right
    metres = extent / size
    goal = np.array([0.30 + (rows.mean() + 0.5 - size / 2) * metres, (cols.mean() + 0.5 - size / 2) * metres])
    states = np.stack([s["observation"]["state"] for s in steps]).astype(np.float64)
    actions = np.stack([s["action"] for s in steps]).astype(np.float64)
    closed = False
    for t in range(len(steps) - 1):
        # what training sees: bridge relabels movement as the next state minus this one
        movement = states[t + 1, :3] - states[t, :3]
        matches = [
            c
            for target, c in _targets(goal, states[t, :3], closed, margin=0.004)
            if np.allclose(
                movement, np.clip(0.4 * (np.array(target) - states[t, :3]), -0.025, 0.025), rtol=0, atol=0.004
            )
        ]
        assert matches, f"step {t}: movement {movement} follows from no target"
        closed = actions[t, 6] == 0.0
        assert closed in matches
        assert not actions[t, 3:6].any() and not states[t + 1, 3:6].any()  # the orientation is kept
    assert closed, "the hand reaches and grasps within the episode"


def test_reach_episodes_differ_between_splits_and_repeat():
    a, b = reach_task.reach_episode("train", 0), reach_task.reach_episode("val", 0)
    again = reach_task.reach_episode("train", 0)
    assert not np.array_equal(a["steps"][0]["observation"]["state"], b["steps"][0]["observation"]["state"])
    assert np.array_equal(a["steps"][5]["observation"]["image_0"], again["steps"][5]["observation"]["image_0"])


def test_validation_points_read_from_the_log(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(
        "\n".join(
            [
                json.dumps({"step": 10, "loss": 1.0}),
                json.dumps(
                    {"step": 20, "loss": 0.9, "val_loss": 0.8, "val_accuracy@0.2": 0.25, "val_accuracy@0.5": 0.5}
                ),
                json.dumps({"event": "resumed", "step": 20}),
                json.dumps({"step": 40, "val_loss": 0.5, "val_accuracy@0.2": 0.5, "val_accuracy@0.5": 0.75}),
                '{"step": 50, "val_lo',  # cut by a crash
            ]
        )
        + "\n"
    )
    losses, accuracy = validation_points(log)
    assert losses == [(20, 0.8), (40, 0.5)]
    assert accuracy == {"0.2": [(20, 0.25), (40, 0.5)], "0.5": [(20, 0.5), (40, 0.75)]}


def test_quickstart_evaluates_its_checkpoint_and_prints_the_next_commands(quickstart_runs):
    root, (_, result) = quickstart_runs
    run = root / "run"
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    # held out: 2 val episodes of 8 steps, the last step of each dropped by the bridge relabelling
    assert metrics["num_samples"] == 2 * 7 and metrics["eval_data_path"][0].startswith(str(root / "cache"))
    assert {"accuracy@0.2", "accuracy@0.5"} <= set(metrics)
    assert (run / "eval" / "trajectories.png").stat().st_size > 0 and (run / "loss_curve.png").stat().st_size > 0
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("val_accuracy@0.5" in r for r in records)
    commands = [line.strip() for line in result.stdout.split("Next:\n", 1)[1].splitlines()[:3]]
    scripts = [shlex.split(c)[2] for c in commands]
    assert scripts == ["scripts/serve_policy.py", "scripts/infer.py", "scripts/eval_offline.py"]
    checkpoint = Path(shlex.split(commands[0])[shlex.split(commands[0]).index("--checkpoint_path") + 1])
    assert checkpoint == run / "checkpoints" / "step_000004" and (checkpoint / "model.safetensors").is_file()
    # the printed infer command runs as printed (its image exists, its state has the checkpoint's 7 values)
    infer = shlex.split(commands[1])[2:]
    answer = subprocess.run(
        [sys.executable, *infer],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert answer.returncode == 0, answer.stderr
    assert np.asarray(json.loads(answer.stdout)["actions"]).shape == (4, 7)


def test_quickstart_console_has_no_tensorflow_noise(quickstart_runs):
    for result in quickstart_runs[1]:
        assert not [m for m in NOISE_MARKERS if m in result.stderr + result.stdout], result.stderr[-5000:]
