"""Scripted Meta-World demonstrations as RLDS episodes.

`collect_episode` runs a task's scripted expert from one seed while rendering, in a process that must
never import tensorflow (MuJoCo's EGL context crashes such a process). `iter_demonstrations` runs
those in spawned worker processes and yields finished episodes in a fixed order (task by task, seeds
0..N-1), keeping only a bounded number in flight; `write_metaworld_dataset` (tensorflow, in the
calling process) writes them as the RLDS dataset `metaworld/1.0.0` that the `metaworld` dataset
config reads.

Step layout (one per environment step, the observation before the action):
    observation/image       (S, S, 3) uint8 JPEG   camera corner4 rotated 180 degrees (or another view: --camera)
    observation/image_secondary  (S, S, 3) uint8 JPEG  a second view of the same step (only with --secondary_camera)
    observation/state       (4,) float32           hand xyz, gripper opening: the policy's proprio
    observation/full_state  (39,) float32          the whole Meta-World observation (objects, goal), unused in training
    action                  (4,) float32           the expert's action clipped to [-1, 1]
    reward, discount, is_first, is_last, is_terminal, language_instruction
Episode metadata: task, seed, success. An episode ends at the first successful step (or after
max_steps); only successful episodes are written.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pg_vla.eval.metaworld.env import DEFAULT_MAX_STEPS, PROPRIO_SLICE
from pg_vla.eval.metaworld.rendering import DEFAULT_CAMERA, DEFAULT_IMAGE_SIZE
from pg_vla.eval.metaworld.tasks import get_task

DATASET_NAME = "metaworld"
DATASET_VERSION = "1.0.0"
FULL_STATE_DIM = 39
VAL_FIRST_SEED = 50_000  # validation episodes; training uses 0..N-1, evaluation 100000 on


def collect_episode(
    task: str,
    seed: int,
    max_steps: int = DEFAULT_MAX_STEPS,
    image_size: int = DEFAULT_IMAGE_SIZE,
    camera: str = DEFAULT_CAMERA,
    secondary_camera: str | None = None,
) -> dict[str, Any]:
    """One expert episode -> images (T, S, S, 3), states (T, 39), actions (T, 4), rewards (T,), success;
    with a secondary camera also secondary_images (T, S, S, 3)."""
    from pg_vla.eval.metaworld.env import MetaWorldEnv, ScriptedExpert

    env = MetaWorldEnv(
        task, max_steps=max_steps, image_size=image_size, camera=camera, secondary_camera=secondary_camera
    )
    expert = ScriptedExpert(task)
    images, second, states, actions, rewards = [], [], [], [], []
    try:
        obs, instruction = env.reset(seed)
        while True:
            action = expert(obs)
            images.append(obs.image)
            second.append(obs.secondary_image)
            states.append(obs.state)
            actions.append(action)
            result = env.step(action)
            rewards.append(result.info["reward"])
            obs = result.obs
            if result.done:
                break
    finally:
        env.close()
    episode = {
        "task": task,
        "seed": int(seed),
        "instruction": instruction,
        "success": bool(result.success),
        "images": np.stack(images),
        "states": np.stack(states).astype(np.float32),
        "actions": np.stack(actions).astype(np.float32),
        "rewards": np.asarray(rewards, np.float32),
    }
    if secondary_camera:
        episode["secondary_images"] = np.stack(second)
    return episode


def _worker_init() -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def iter_demonstrations(
    tasks: Sequence[str],
    episodes_per_task: int,
    *,
    workers: int = 2,
    first_seed: int = 0,
    max_steps: int = DEFAULT_MAX_STEPS,
    image_size: int = DEFAULT_IMAGE_SIZE,
    camera: str = DEFAULT_CAMERA,
    secondary_camera: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Expert episodes of every task for seeds first_seed .. first_seed + episodes_per_task - 1, in that
    order, rendered by `workers` spawned processes (at most 2 x workers episodes held at once)."""
    for task in tasks:
        get_task(task)
    if episodes_per_task < 1 or workers < 1:
        raise ValueError(f"episodes_per_task and workers must be >= 1, got {episodes_per_task}, {workers}")
    jobs = deque((task, first_seed + i) for task in tasks for i in range(episodes_per_task))
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no tensorflow in the renderer
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        pending: deque[Future] = deque()
        while jobs or pending:
            while jobs and len(pending) < 2 * workers:
                task, seed = jobs.popleft()
                args = (task, seed, max_steps, image_size, camera, secondary_camera)
                pending.append(pool.submit(collect_episode, *args))
            yield pending.popleft().result()


def to_rlds_episode(episode: dict[str, Any]) -> dict[str, Any]:
    """A collected episode -> the dict the `metaworld_features` schema encodes."""
    length = len(episode["actions"])
    steps = []
    for t in range(length):
        last = t == length - 1
        observation = {
            "image": episode["images"][t],
            "state": episode["states"][t, PROPRIO_SLICE].astype(np.float32),
            "full_state": episode["states"][t].astype(np.float32),
        }
        if "secondary_images" in episode:
            observation["image_secondary"] = episode["secondary_images"][t]
        steps.append(
            {
                "observation": observation,
                "action": episode["actions"][t],
                "reward": np.float32(episode["rewards"][t]),
                "discount": np.float32(1.0),
                "is_first": t == 0,
                "is_last": last,
                "is_terminal": bool(last and episode["success"]),
                "language_instruction": episode["instruction"],
            }
        )
    return {
        "steps": steps,
        "episode_metadata": {
            "task": episode["task"],
            "seed": np.int64(episode["seed"]),
            "success": bool(episode["success"]),
        },
    }


def metaworld_features(
    image_size: int = DEFAULT_IMAGE_SIZE, camera: str = DEFAULT_CAMERA, secondary_camera: str | None = None
) -> Any:
    """The RLDS schema of the dataset (imports tensorflow_datasets)."""
    import tensorflow_datasets as tfds

    f = tfds.features

    def image(view: str) -> Any:
        return f.Image(
            shape=(image_size, image_size, 3),
            dtype=np.uint8,
            encoding_format="jpeg",
            doc=f"View {view} (camera rotated 180 degrees).",
        )

    second = {"image_secondary": image(secondary_camera)} if secondary_camera else {}
    step = f.FeaturesDict(
        {
            "observation": f.FeaturesDict(
                {
                    "image": image(camera),
                    **second,
                    "state": f.Tensor(
                        shape=(4,), dtype=np.float32, doc="Hand xyz and gripper opening (observation[0:4])."
                    ),
                    "full_state": f.Tensor(
                        shape=(FULL_STATE_DIM,),
                        dtype=np.float32,
                        doc="The full Meta-World observation (hand, objects, previous step, goal).",
                    ),
                }
            ),
            "action": f.Tensor(
                shape=(4,),
                dtype=np.float32,
                doc="Hand xyz motion and gripper effort (-1 open, +1 close), clipped to [-1, 1].",
            ),
            "reward": f.Scalar(dtype=np.float32, doc="Meta-World's shaped reward."),
            "discount": f.Scalar(dtype=np.float32, doc="Always 1."),
            "is_first": f.Scalar(dtype=np.bool_, doc="True on the first step."),
            "is_last": f.Scalar(dtype=np.bool_, doc="True on the last step."),
            "is_terminal": f.Scalar(dtype=np.bool_, doc="True on the last step of a successful episode."),
            "language_instruction": f.Text(doc="The task's instruction."),
        }
    )
    return f.FeaturesDict(
        {
            "steps": f.Dataset(step),
            "episode_metadata": f.FeaturesDict(
                {
                    "task": f.Text(doc="Meta-World v3 task name."),
                    "seed": f.Scalar(dtype=np.int64, doc="Seed of the initial configuration."),
                    "success": f.Scalar(dtype=np.bool_, doc="Whether the expert solved the task."),
                }
            ),
        }
    )


def write_metaworld_dataset(
    output_dir: str | Path,
    tasks: Sequence[str],
    episodes_per_task: int,
    *,
    val_episodes_per_task: int = 0,
    workers: int = 2,
    first_seed: int = 0,
    max_steps: int = DEFAULT_MAX_STEPS,
    image_size: int = DEFAULT_IMAGE_SIZE,
    camera: str = DEFAULT_CAMERA,
    secondary_camera: str | None = None,
    num_shards: int = 1,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Collect and write the demonstrations to <output_dir>/metaworld/1.0.0 -> counts and timing.

    Split "train" holds seeds first_seed + i (i < episodes_per_task); split "val", when
    val_episodes_per_task > 0, seeds VAL_FIRST_SEED + i, disjoint from both training and evaluation seeds.
    """
    from pg_vla.data.rlds.writer import write_rlds_dataset

    stats: dict[str, Any] = {"episodes": 0, "failed": [], "steps": 0, "per_task": {task: 0 for task in tasks}}
    tic = time.perf_counter()

    def episodes(count: int, seed: int, split: str) -> Iterator[dict[str, Any]]:
        for episode in iter_demonstrations(
            tasks,
            count,
            workers=workers,
            first_seed=seed,
            max_steps=max_steps,
            image_size=image_size,
            camera=camera,
            secondary_camera=secondary_camera,
        ):
            if not episode["success"]:
                stats["failed"].append(f"{episode['task']}:{episode['seed']}")
                continue
            if split == "train":
                stats["episodes"] += 1
                stats["steps"] += len(episode["actions"])
                stats["per_task"][episode["task"]] += 1
            yield to_rlds_episode(episode)

    splits = {"train": episodes(episodes_per_task, first_seed, "train")}
    if val_episodes_per_task > 0:
        splits["val"] = episodes(val_episodes_per_task, VAL_FIRST_SEED, "val")
    shards = min(num_shards, len(tasks) * min(episodes_per_task, val_episodes_per_task or episodes_per_task))
    folder = write_rlds_dataset(
        output_dir,
        DATASET_NAME,
        DATASET_VERSION,
        metaworld_features(image_size, camera, secondary_camera),
        splits,
        num_shards=shards,
        overwrite=overwrite,
        description=f"Scripted Meta-World v3 demonstrations: tasks {list(tasks)}, seeds {first_seed}.."
        f"{first_seed + episodes_per_task - 1}, camera (view) {camera} rotated 180 degrees"
        f"{f' and second view {secondary_camera}' if secondary_camera else ''}, "
        f"{image_size}x{image_size}, at most {max_steps} steps, successful episodes only.",
    )
    return {"path": str(folder), **stats, "seconds": round(time.perf_counter() - tic, 1)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line of scripts/data/make_metaworld_demos.py (also `python -m pg_vla.eval.metaworld.demos`)."""
    import argparse
    import json
    import sys

    from pg_vla.eval.metaworld.tasks import BENCHMARK_TASKS, TASKS

    parser = argparse.ArgumentParser(
        description="Write scripted Meta-World demonstrations as an RLDS dataset (<output_dir>/metaworld/1.0.0)."
    )
    parser.add_argument("--output_dir", required=True, help="data root; the dataset goes to <dir>/metaworld/1.0.0")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(BENCHMARK_TASKS))
    parser.add_argument("--episodes_per_task", type=int, default=50)
    parser.add_argument(
        "--val_episodes_per_task",
        type=int,
        default=5,
        help=f"episodes per task in the 'val' split (seeds {VAL_FIRST_SEED}..); 0: no val split",
    )
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    parser.add_argument("--first_seed", type=int, default=0)
    parser.add_argument("--max_steps", type=int, default=DEFAULT_MAX_STEPS)
    parser.add_argument("--image_size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument(
        "--camera",
        default=DEFAULT_CAMERA,
        help="a view of pg_vla.eval.metaworld.rendering.VIEWS (e.g. corner4_workspace) or a MuJoCo camera; "
        "evaluate with the same env.camera",
    )
    parser.add_argument(
        "--secondary_camera",
        default=None,
        help="a second view stored as observation/image_secondary (the 'secondary' camera role), e.g. topview; "
        "train with data.camera_roles=[primary,secondary] and evaluate with the same env.secondary_camera",
    )
    parser.add_argument("--num_shards", type=int, default=4)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    args = parser.parse_args(argv)

    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    try:
        summary = write_metaworld_dataset(
            args.output_dir,
            args.tasks,
            args.episodes_per_task,
            val_episodes_per_task=args.val_episodes_per_task,
            workers=args.workers,
            first_seed=args.first_seed,
            max_steps=args.max_steps,
            image_size=args.image_size,
            camera=args.camera,
            secondary_camera=args.secondary_camera,
            num_shards=args.num_shards,
            overwrite=args.overwrite,
        )
    except (FileExistsError, ValueError) as err:
        sys.exit(f"error: {err}")
    if summary["failed"]:
        print(
            f"warning: the expert failed on {len(summary['failed'])} episodes (not written): {summary['failed']}",
            file=sys.stderr,
        )
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
