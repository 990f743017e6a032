"""Where does a Meta-World policy place the objects? Its scene-state readout on unseen seeds, printing JSON.

    uv run scripts/bench/scene_state_readout.py CHECKPOINT [--tasks reach-v3 push-v3] [--seeds 50]

For a checkpoint trained with the scene-state target (`model.scene_state_weight > 0`), the first frame of
each task is rendered for seeds 100000.. (`--seed_start`) at the checkpoint's view (`--camera`), and the
policy's readout (`Policy.scene_state`: the object and goal xyz of the `metaworld` dataset config, in
metres) is compared with the simulator's state. Reported per task: the median error of the object and
the goal position and the share within `--radius` (0.05 m, reach's success radius), against the same
figures for guessing the task's mean position over these seeds (what the instruction alone can tell).
A readout that places the goal well while the policy misses it says the action pathway, not the
perception, is what fails.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from pg_vla.eval.metrics import position_errors
from pg_vla.eval.metaworld.rendering import DEFAULT_CAMERA, DEFAULT_IMAGE_SIZE

FIVE_TASKS = ["reach-v3", "push-v3", "button-press-topdown-v3", "window-open-v3", "plate-slide-v3"]
OBJECT, GOAL = slice(0, 3), slice(3, 6)  # of the `metaworld` dataset config's scene state


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a training run or checkpoint folder")
    parser.add_argument("--tasks", nargs="+", default=FIVE_TASKS, help="Meta-World v3 tasks")
    parser.add_argument("--seeds", type=int, default=50, help="first frames per task")
    parser.add_argument("--seed_start", type=int, default=100000, help="the first seed (evaluation's range)")
    parser.add_argument("--camera", default=DEFAULT_CAMERA, help="the view the checkpoint was trained on")
    parser.add_argument("--radius", type=float, default=0.05, help="success radius (m) for the shares")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # the model first: importing torch's compiler stack after MuJoCo's EGL context exists crashes
    from pg_vla.policy import Policy

    policy = Policy.from_checkpoint(args.checkpoint)
    if policy.scene_state_normalizer is None:
        raise SystemExit(f"{args.checkpoint} has no scene-state readout (train with model.scene_state_weight > 0)")
    from pg_vla.data.rlds.dataset_configs import get_dataset_config

    indices = list(get_dataset_config("metaworld").scene_state_indices)  # of Meta-World's 39-value observation
    from pg_vla.eval.metaworld.adapter import MetaWorldAdapter
    from pg_vla.eval.metaworld.env import MetaWorldEnv

    adapter = MetaWorldAdapter()
    result: dict = {"checkpoint": str(args.checkpoint), "seeds": [args.seed_start, args.seed_start + args.seeds - 1]}
    result["radius_m"], result["per_task"] = args.radius, {}
    for task in args.tasks:
        env = MetaWorldEnv(task, image_size=DEFAULT_IMAGE_SIZE, camera=args.camera)
        try:
            frames = [env.reset(seed) for seed in range(args.seed_start, args.seed_start + args.seeds)]
        finally:
            env.close()
        truth = np.stack([obs.state for obs, _ in frames])[:, indices]  # (N, 6) object xyz, goal xyz
        observations = [adapter.preprocess(env, obs, instruction) for obs, instruction in frames]
        predicted = np.concatenate([policy.scene_state(observations[i : i + 16]) for i in range(0, len(frames), 16)])
        guess = np.broadcast_to(truth.mean(0), truth.shape)  # the task's mean position, no image read
        result["per_task"][task] = {
            "object": position_errors(predicted[:, OBJECT], truth[:, OBJECT], args.radius),
            "object_task_mean": position_errors(guess[:, OBJECT], truth[:, OBJECT], args.radius),
            "goal": position_errors(predicted[:, GOAL], truth[:, GOAL], args.radius),
            "goal_task_mean": position_errors(guess[:, GOAL], truth[:, GOAL], args.radius),
        }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
