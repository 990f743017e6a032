"""Can the Meta-World benchmark's vision tower find the goal in one frame? A linear probe, printing JSON.

    uv run scripts/bench/vision_probe.py [--task reach-v3] [--train_seeds 400] [--test_seeds 100] [--steps 1500]

The first frame of `task` is rendered for seeds 0..N-1 (training) and 100000.. (test) at the benchmark's view
(224x224, `--camera`), preprocessed as the policy preprocesses it (`VLAProcessor`: to 112x112, [-1, 1]), and
the randomly initialised SigLIP of the generated small PaliGemma (the tower `metaworld_benchmark.sh` starts
from: 2 layers, 49 patches of 16 px) is trained with a linear head on its flattened patch features to regress
the goal and the object position (`state[36:39]`, `state[4:7]`; standardised) with AdamW, batch 32.

Reported for the test seeds: the median error of each position (m) and the share of goals placed within
`--radius` (0.05 m, reach's success radius), against the same figures for predicting the training mean.
A tower that locates the goal well here but a policy that misses it says the action loss, not the
pixels, is what keeps the policy from looking.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pg_vla.eval.metrics import position_errors
from pg_vla.eval.metaworld.rendering import DEFAULT_CAMERA, DEFAULT_IMAGE_SIZE

TEST_SEED_START = 100000
GOAL, OBJECT = slice(36, 39), slice(4, 7)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="reach-v3", help="a Meta-World v3 task (pg_vla.eval.metaworld.tasks)")
    parser.add_argument("--train_seeds", type=int, default=400, help="training frames, seeds 0..N-1")
    parser.add_argument("--test_seeds", type=int, default=100, help=f"test frames, seeds {TEST_SEED_START}..")
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--radius", type=float, default=0.05, help="success radius (m) for the goal share")
    parser.add_argument("--camera", default=DEFAULT_CAMERA, help="a view of pg_vla.eval.metaworld.rendering")
    parser.add_argument("--seed", type=int, default=0, help="the tower's and the sampler's seed")
    args = parser.parse_args(argv)
    if args.train_seeds < 2:
        parser.error(f"--train_seeds must be >= 2 (the targets are standardised), got {args.train_seeds}")
    for name in ("test_seeds", "steps", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def first_frames(task: str, seeds: range, camera: str) -> tuple[np.ndarray, np.ndarray]:
    """-> images (N, 224, 224, 3) uint8 and states (N, 39) float64 of each seed's first step."""
    from pg_vla.eval.metaworld.env import MetaWorldEnv

    env = MetaWorldEnv(task, image_size=DEFAULT_IMAGE_SIZE, camera=camera)
    try:
        observations = [env.reset(seed)[0] for seed in seeds]
    finally:
        env.close()
    return np.stack([obs.image for obs in observations]), np.stack([obs.state for obs in observations])


def tower_and_processor(seed: int, folder: Path):
    """The benchmark's starting vision tower (the generated small PaliGemma) and its image processor."""
    from pg_vla.model.paligemma.processing import VLAProcessor
    from pg_vla.model.paligemma.tiny_checkpoint import make_tiny_paligemma_checkpoint
    from pg_vla.model.vla.pizero import PiZero

    make_tiny_paligemma_checkpoint(folder, variant="small", seed=seed)
    tower = PiZero.from_paligemma(folder).vision_tower
    processor = VLAProcessor.from_pretrained(folder, max_text_tokens=12)
    return tower, processor


def train_probe(
    tower: nn.Module,
    pixels: torch.Tensor,
    targets: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> nn.Module:
    """Train `tower` + a linear head on (N, 3, S, S) pixels to (N, 6) targets standardised by `mean`, `std`."""
    goal = torch.from_numpy((targets - mean) / std).float()  # (N, 6)
    tokens, width = tower.config.num_patches, tower.config.hidden_size
    head = nn.Linear(tokens * width, targets.shape[1])
    probe = nn.Sequential(tower, nn.Flatten(), head)  # (B, 3, S, S) -> (B, P, D) -> (B, P*D) -> (B, 6)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    probe.train()
    for _ in range(steps):
        index = torch.randint(len(pixels), (batch_size,), generator=generator)
        loss = torch.nn.functional.mse_loss(probe(pixels[index]), goal[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    probe.eval()
    return probe


@torch.no_grad()
def predict(probe: nn.Module, pixels: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(M, 3, S, S) pixels -> (M, 6) positions (m), the standardisation undone."""
    out = torch.cat([probe(chunk) for chunk in pixels.split(64)]).numpy().astype(np.float64)
    return out * std + mean


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    # the model first: importing torch's compiler stack (transformers does) after MuJoCo's EGL context exists crashes
    with tempfile.TemporaryDirectory() as folder:
        tower, processor = tower_and_processor(args.seed, Path(folder))
    start = time.perf_counter()
    train_images, train_states = first_frames(args.task, range(args.train_seeds), args.camera)
    test_images, test_states = first_frames(
        args.task, range(TEST_SEED_START, TEST_SEED_START + args.test_seeds), args.camera
    )
    render_s = time.perf_counter() - start
    train_pixels = processor.preprocess_images(train_images)[:, 0]  # (N, 3, S, S)
    test_pixels = processor.preprocess_images(test_images)[:, 0]
    targets = np.concatenate([train_states[:, GOAL], train_states[:, OBJECT]], axis=1)  # (N, 6)
    mean, std = targets.mean(0), targets.std(0) + 1e-8  # (6,)
    start = time.perf_counter()
    probe = train_probe(
        tower,
        train_pixels,
        targets,
        mean,
        std,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    train_s = time.perf_counter() - start
    predicted = predict(probe, test_pixels, mean, std)  # (M, 6)
    mean = np.broadcast_to(mean, predicted.shape)
    result = {
        "task": args.task,
        "camera": args.camera,
        "image_size": processor.image_size,
        "patch_size": tower.config.patch_size,
        "train_seeds": [0, args.train_seeds - 1],
        "test_seeds": [TEST_SEED_START, TEST_SEED_START + args.test_seeds - 1],
        "steps": args.steps,
        "batch_size": args.batch_size,
        "radius_m": args.radius,
        "goal": position_errors(predicted[:, 0:3], test_states[:, GOAL], args.radius),
        "goal_train_mean": position_errors(mean[:, 0:3], test_states[:, GOAL], args.radius),
        "object": position_errors(predicted[:, 3:6], test_states[:, OBJECT], args.radius),
        "object_train_mean": position_errors(mean[:, 3:6], test_states[:, OBJECT], args.radius),
        "render_s": round(render_s, 1),
        "train_s": round(train_s, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
