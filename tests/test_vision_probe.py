"""scripts/bench/vision_probe.py: a tiny run in a fresh process, its baseline against numpy on the env's states."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metaworld_subprocess import REPO, load_script, run_python, run_script

pytest.importorskip("metaworld")
SCRIPT = REPO / "scripts" / "bench" / "vision_probe.py"


def _module():
    return load_script(SCRIPT)


def test_bad_arguments_are_named(capsys):
    probe = _module()
    for argv, word in ((["--steps", "0"], "--steps"), (["--train_seeds", "1"], "--train_seeds")):
        with pytest.raises(SystemExit):
            probe.parse_args(argv)
        assert word in capsys.readouterr().err


def test_tiny_probe_reports_positions_and_the_train_mean_baseline():
    proc = run_script(
        [str(SCRIPT), "--train_seeds", "6", "--test_seeds", "4", "--steps", "3", "--batch_size", "4"], timeout=300
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["train_seeds"] == [0, 5] and result["test_seeds"] == [100000, 100003]
    assert (result["image_size"], result["patch_size"]) == (112, 16)
    for key in ("goal", "object"):
        assert np.isfinite(result[key]["median_error_m"]) and 0.0 <= result[key]["within_radius"] <= 1.0

    # the train-mean baseline recomputed from the environment's own states (no rendering, plain numpy)
    states = run_python(
        "import json\n"
        "from pg_vla.eval.metaworld.env import MetaWorldEnv\n"
        "env = MetaWorldEnv('reach-v3', render=False)\n"
        "seeds = list(range(6)) + list(range(100000, 100004))\n"
        "print(json.dumps([env.reset(s)[0].state.tolist() for s in seeds]))\n"
    )
    states = np.asarray(states)
    train, test = states[:6], states[6:]
    for key, cols in (("goal", slice(36, 39)), ("object", slice(4, 7))):
        distance = np.linalg.norm(test[:, cols] - train[:, cols].mean(0), axis=1)
        baseline = result[f"{key}_train_mean"]
        assert baseline["median_error_m"] == pytest.approx(np.median(distance), abs=1e-9)
        assert baseline["within_radius"] == pytest.approx(np.mean(distance <= 0.05))
