"""The evaluation agent is not the bottleneck: the scripted expert run through it keeps its known 100%
success, doing nothing scores 0, and the outputs (JSONL, summary, chart, videos) are written."""

from __future__ import annotations

import json

import pytest

from metaworld_subprocess import run_python
from pg_vla.eval.agent import EvalConfig
from pg_vla.eval.controllers import CheckpointController, ZeroController
from pg_vla.eval.report import EpisodeResult, summarize

_EVALUATE = """
import json
from pg_vla.eval.agent import evaluate
out = {{}}
for policy, episodes, n_video in (("expert", 5, 1), ("zero", 1, 0)):
    out[policy] = evaluate({{"policy": policy, "env": {{"name": "metaworld", "tasks": ["reach-v3", "push-v3"]}},
                            "n_eval_episode": episodes, "eval_seed_start": 100000, "n_video": n_video,
                            "num_envs": 3, "log_dir": "{log_dir}/" + policy}})
from pg_vla.eval.agent import EvalConfig, Evaluator
from pg_vla.eval.metaworld.env import record_expert_actions
from pg_vla.eval.metaworld.suite import MetaWorldSuite
class Recording(MetaWorldSuite):  # the real suite, noting which environments render
    made = []
    def make_env(self, task, *, render=True):
        self.made.append([task, render])
        return super().make_env(task, render=render)
cfg = EvalConfig.from_dict({{"policy": "zero", "env": {{"name": "metaworld", "tasks": ["reach-v3"]}},
                            "n_eval_episode": 3, "n_video": 1, "num_envs": 1, "log_dir": "{log_dir}/recorded"}})
evaluator = Evaluator(cfg)
evaluator.suite = Recording()
evaluator.run()
out["made"] = Recording.made
out["expert_steps"] = {{f"{{t}}:{{s}}": len(record_expert_actions(t, s)) for t in ("reach-v3", "push-v3")
                       for s in range(100000, 100005)}}
import numpy as np
from pg_vla.eval.metaworld.env import MetaWorldEnv
env = MetaWorldEnv("push-v3", render=False)
state = env.reset(100000)[0].state
out["puck_to_goal"] = float(np.linalg.norm(state[4:7] - state[36:39]))  # the puck (4:7) and the goal (36:39)
env.close()
print(json.dumps(out))
"""


def test_expert_scores_full_success_and_zero_action_scores_nothing(tmp_path):
    pytest.importorskip("metaworld")
    out = run_python(_EVALUATE.format(log_dir=tmp_path))
    assert out["expert"]["per_task"] == {"reach-v3": 1.0, "push-v3": 1.0}  # Meta-World's experts: 20/20 measured
    assert out["zero"]["per_task"] == {"reach-v3": 0.0, "push-v3": 0.0}
    assert out["expert"]["mean"] == 1.0 and out["zero"]["mean"] == 0.0

    lines = [json.loads(line) for line in (tmp_path / "expert" / "episodes.jsonl").read_text().splitlines()]
    assert sorted((r["task"], r["seed"]) for r in lines) == sorted(
        (task, 100000 + i) for task in ("reach-v3", "push-v3") for i in range(5)
    )
    assert all(r["success"] and 0 < r["steps"] < 200 for r in lines)
    # episodes 2-5 of each task run without rendering (blind floors render only their videos): each took as
    # many steps as the expert's blind recording of that seed (pg_vla.eval.metaworld.env, no agent)
    assert {f"{r['task']}:{r['seed']}": r["steps"] for r in lines} == out["expert_steps"]
    assert out["made"] == [["reach-v3", True], ["reach-v3", False]]  # the video episode renders, not the rest
    assert CheckpointController.reads_images and not ZeroController.reads_images
    assert {r["instruction"] for r in lines} == {"reach the red target", "push the puck to the green target"}
    zero = [json.loads(line) for line in (tmp_path / "zero" / "episodes.jsonl").read_text().splitlines()]
    assert all(r["steps"] == 200 and not r["success"] for r in zero)  # the step cap ends failed episodes
    # each episode keeps the last step's distance to the goal: within reach's 5 cm success radius for the expert;
    # with zero actions the puck stays put, so on push it is the initial puck-goal distance (numpy, from the
    # first observation)
    assert all(r["final"]["obj_to_target"] <= 0.05 for r in lines if r["task"] == "reach-v3")
    (push,) = [r for r in zero if r["task"] == "push-v3"]
    assert push["final"]["obj_to_target"] == pytest.approx(out["puck_to_goal"], abs=1e-3)
    zero_summary = json.loads((tmp_path / "zero" / "summary.json").read_text())
    assert zero_summary["final_median"]["push-v3"]["obj_to_target"] == push["final"]["obj_to_target"]  # 1 episode

    summary = json.loads((tmp_path / "expert" / "summary.json").read_text())
    assert summary["per_task"] == {"reach-v3": 1.0, "push-v3": 1.0} and summary["mean"] == 1.0
    videos = sorted(p.name for p in (tmp_path / "expert" / "videos").iterdir())
    assert [v.rsplit(".", 1)[0] for v in videos] == ["push-v3_seed100000_success", "reach-v3_seed100000_success"]
    assert (tmp_path / "expert" / "success.png").stat().st_size > 0
    assert not (tmp_path / "zero" / "videos").exists()


def test_summary_rates_are_per_task_means():
    results = [
        EpisodeResult("a", 0, True, 5, "x", {"obj_to_target": 0.02}),
        EpisodeResult("a", 1, False, 200, "x", {"obj_to_target": 0.30}),
        EpisodeResult("a", 2, False, 200, "x", {"obj_to_target": 0.10, "grasp_success": 1.0}),
        EpisodeResult("b", 0, True, 7, "y"),
    ]
    summary = summarize(results, ["a", "b"])
    assert summary["per_task"] == {"a": pytest.approx(1 / 3), "b": 1.0}
    assert summary["mean"] == pytest.approx((1 / 3 + 1) / 2)
    assert summary["episodes"] == {"a": 3, "b": 1}
    # medians over the episodes that report a measure; a task without measures has none
    assert summary["final_median"] == {"a": {"obj_to_target": 0.10, "grasp_success": 1.0}, "b": {}}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"policy": "oracle"}, "policy must be one of"),
        ({"policy": "checkpoint"}, "checkpoint_path"),
        ({"n_eval_episode": 0}, "n_eval_episode"),
        ({"unknown_key": 1}, "unknown evaluation config keys"),
        ({"temporal_ensemble_k": 0.01, "act_steps": 2}, "act_steps must be null or 1"),
    ],
)
def test_config_errors_are_clear(tmp_path, overrides, message):
    data = {"policy": "zero", "log_dir": str(tmp_path), **overrides}
    with pytest.raises(ValueError, match=message):
        EvalConfig.from_dict(data)
