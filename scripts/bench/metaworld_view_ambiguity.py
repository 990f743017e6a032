"""How well can a goal's 3-D position be read from the camera views, at best? Prints one JSON document.

    uv run scripts/bench/metaworld_view_ambiguity.py [--task reach-v3] [--views corner4 corner4,topview]

Goals are drawn uniformly in the task's goal box and projected through each view's pinhole camera (its
MuJoCo pose and field of view) onto the model's image grid (--image_size, default 112). The best any
policy can do from the pixels alone is the mean goal among those that land on the same pixels (cells of
--cell px in every view); a goal is "placed" when that estimate is within --tolerance (reach's success
radius, 5 cm). One camera leaves the depth along each ray open: reach's goal box is 25 cm tall, so from
corner4 alone a perfect reading of the goal's pixel places it within 5 cm only part of the time. The
hand's motion in closed loop can still close that gap; the figure bounds a policy that reads the goal
once, from the first frame.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import numpy as np


def pinhole(position: np.ndarray, rotation: np.ndarray, fovy_deg: float, image_size: int):
    """World points (N, 3) -> pixel coordinates (N, 2) of a MuJoCo camera (x right, y up, looking along -z)."""
    focal = 0.5 * image_size / np.tan(np.deg2rad(fovy_deg) / 2)

    def project(points: np.ndarray) -> np.ndarray:
        camera = (points - position) @ rotation  # (N, 3) in camera axes
        depth = -camera[:, 2]
        if np.any(depth <= 0):
            raise ValueError("a point lies behind the camera")
        return focal * camera[:, :2] / depth[:, None]

    return project


def best_placement(points: np.ndarray, pixels: np.ndarray, cell: float, tolerance: float, min_count: int = 5):
    """The conditional-mean estimate of each point given its pixel cell -> (fraction within tolerance,
    median error, cells used, fraction of the points in them). points (N, 3), pixels (N, 2k) for k
    views. Cells with fewer than `min_count` points are left out (too few to estimate their mean)."""
    keys = np.floor(pixels / cell).astype(np.int64)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    counts = np.bincount(inverse)
    means = np.stack([np.bincount(inverse, points[:, k]) / counts for k in range(3)], axis=1)
    error = np.linalg.norm(means[inverse] - points, axis=1)
    kept = counts[inverse] >= min_count
    placed, median = float((error[kept] < tolerance).mean()), float(np.median(error[kept]))
    return placed, median, int((counts >= min_count).sum()), float(kept.mean())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="reach-v3")
    parser.add_argument(
        "--views",
        nargs="+",
        default=["corner4", "topview", "corner4,topview"],
        help="MuJoCo cameras; a comma joins cameras seen together",
    )
    parser.add_argument("--image_size", type=int, default=112, help="the model's image side (px)")
    parser.add_argument("--cell", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="pixel precision (px)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="success radius (m)")
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)

    os.environ.setdefault("MUJOCO_GL", "egl")
    import mujoco

    from pg_vla.eval.metaworld.env import MetaWorldEnv

    env = MetaWorldEnv(args.task, render=False)
    env.reset(0)
    model, data = env.env.model, env.env.data
    low, high = np.asarray(env.env.goal_space.low), np.asarray(env.env.goal_space.high)
    goals = np.random.default_rng(args.seed).uniform(low, high, (args.samples, 3))
    results = []
    for views in args.views:
        pixels = []
        for name in views.split(","):
            index = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
            if index < 0:
                cameras = [model.camera(i).name for i in range(model.ncam)]
                raise SystemExit(f"error: no camera {name!r} in {args.task}; cameras: {cameras}")
            rotation = data.cam_xmat[index].reshape(3, 3)
            pixels.append(pinhole(data.cam_xpos[index], rotation, model.cam_fovy[index], args.image_size)(goals))
        pixels = np.concatenate(pixels, axis=1)
        for cell in args.cell:
            placed, median, cells, used = best_placement(goals, pixels, cell, args.tolerance)
            results.append(
                {
                    "views": views,
                    "cell_px": cell,
                    "placed_within_tolerance": round(placed, 4),
                    "median_error_m": round(median, 4),
                    "cells": cells,
                    "points_used": round(used, 4),
                }
            )
    env.close()
    out = {
        "task": args.task,
        "goal_low": low.tolist(),
        "goal_high": high.tolist(),
        "image_size": args.image_size,
        "tolerance_m": args.tolerance,
        "samples": args.samples,
        "results": results,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
