"""Predict one action chunk for images, a state vector and an instruction, with a pg-vla checkpoint.

Usage:
    uv run scripts/infer.py --checkpoint_path CKPT --image1_paths IMG [IMG ...] [--image2_paths IMG ...]
        --prompt TEXT --state_vector F [F ...] [--seed S] [--output_dir DIR] [--save_predictions]
        [--dataset_name NAME] [--device cpu|cuda] [--use_bf16] [--no_verify]

Example:
    uv run scripts/infer.py --checkpoint_path runs/bridge/checkpoints --image1_paths frame.png \
        --prompt "put the carrot on the plate" --state_vector 0.3 0.0 0.1 0.0 0.0 0.0 1.0 --seed 0

Inputs:
    --image1_paths  images of the checkpoint's first camera role (data.camera_roles[0]), --image2_paths
                    of the second. Several paths per camera would be an observation history; the
                    current models read one image per camera, so exactly one path per camera role
                    is required, and a camera the checkpoint reads may not be left out.
    --state_vector  required: the robot's current proprio state in robot units, exactly as many values
                    as the checkpoint's statistics have (7 for bridge: xyz, rpy, gripper). A missing or
                    wrong-sized vector stops with an error naming the expected length.
    --seed          noise seed, an integer in [0, 2**63) (the policy server's rule); without it a
                    random seed is drawn and reported, so every printed prediction can be reproduced.

stdout gets one JSON document: the actions (H x A, robot units), the normalized actions, the seed and
the inputs. With --save_predictions it is also written to DIR/prediction.json with the actions in
DIR/actions.npy (float32 (H, A)). Errors go to stderr with exit status 2 (a bad --seed is refused by
argparse before the checkpoint loads).
"""

from __future__ import annotations

from pg_vla.utils import quiet

quiet.configure()  # before the libraries load: TF/absl logging, known warnings, --verbose

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pg_vla.utils.seeds import SEED_RULE, check_seed
from pg_vla.utils.stdout import stdout_to_stderr


class InputError(ValueError):
    """Bad command-line input: reported as 'error: ...' with exit status 2."""


class OutputError(RuntimeError):
    """The model gave no usable actions (non-finite values): reported as 'error: ...' with exit status 2."""


def seed_argument(text: str) -> int:
    """--seed's argparse type: the same rule as the policy server's request seed."""
    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {SEED_RULE}, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint_path", required=True, help="checkpoint folder, or a run's checkpoints/ or log_dir"
    )
    parser.add_argument("--image1_paths", nargs="+", required=True, help="image(s) of the first camera role")
    parser.add_argument("--image2_paths", nargs="+", default=None, help="image(s) of the second camera role")
    parser.add_argument("--prompt", required=True, help="the language instruction")
    parser.add_argument(
        "--state_vector",
        nargs="+",
        type=float,
        default=None,
        help="proprio state in robot units (required; the checkpoint's state size)",
    )
    parser.add_argument(
        "--seed", type=seed_argument, default=None, help=f"noise seed, {SEED_RULE} (default: a random one, reported)"
    )
    parser.add_argument("--output_dir", default="runs/infer", help="where --save_predictions writes")
    parser.add_argument("--save_predictions", action="store_true", help="write prediction.json and actions.npy")
    parser.add_argument("--dataset_name", default=None, help="statistics to use when the run mixed datasets")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or auto")
    parser.add_argument("--use_bf16", action="store_true", help="bfloat16 weights")
    parser.add_argument(
        "--no_verify",
        action="store_true",
        help="skip checking the checkpoint against its manifest.json (sha256 of every file)",
    )
    return parser.parse_args(argv)


MAX_IMAGE_PIXELS = 1 << 26  # 8192 x 8192: far above any camera frame, far below a decompression bomb


def read_image(path: str, flag: str) -> np.ndarray:
    """An image file -> uint8 RGB (H, W, 3); its header's size is checked before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise InputError(
                    f"{flag}: image {path} is too large to decode safely: {width} x {height} pixels, "
                    f"more than {MAX_IMAGE_PIXELS}"
                )
            return np.array(image.convert("RGB"), dtype=np.uint8)  # writable copy
    except FileNotFoundError:
        raise InputError(f"{flag}: image file {path} does not exist") from None
    except Image.DecompressionBombError as err:
        raise InputError(f"{flag}: image {path} is too large to decode safely: {err}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{flag}: cannot read image {path}: {err}") from None


def read_cameras(image1_paths: Sequence[str], image2_paths: Sequence[str] | None) -> list[list[np.ndarray]]:
    """Per camera (in flag order), its images (H, W, 3) uint8."""
    cameras = [("--image1_paths", image1_paths)] + ([("--image2_paths", image2_paths)] if image2_paths else [])
    return [[read_image(path, flag) for path in paths] for flag, paths in cameras]


def match_cameras(cameras: list[list[np.ndarray]], camera_roles: Sequence[str]) -> dict[str, np.ndarray]:
    """Camera images in flag order -> {role: image}, checked against what the checkpoint reads."""
    roles = list(camera_roles)
    if len(set(roles)) != len(roles):
        raise InputError(f"the checkpoint's camera roles {roles} repeat a role; images cannot be assigned")
    if len(roles) > 2:
        raise InputError(
            f"the checkpoint reads {len(roles)} cameras {roles}; this command takes at most two "
            "(--image1_paths, --image2_paths)"
        )
    if len(cameras) < len(roles):
        raise InputError(
            f"the checkpoint reads {len(roles)} cameras {roles}: give --image2_paths for camera {roles[1]!r}"
        )
    if len(cameras) > len(roles):
        raise InputError(f"the checkpoint reads 1 camera {roles}; --image2_paths has no camera to feed")
    for index, (role, images) in enumerate(zip(roles, cameras), start=1):
        if len(images) != 1:
            raise InputError(
                f"--image{index}_paths got {len(images)} images (an observation history) but the "
                f"checkpoint reads 1 image per camera ({len(roles)} image(s) per sample, one per "
                f"camera role {roles}); give one path for camera {role!r}"
            )
    return {role: images[0] for role, images in zip(roles, cameras)}


def check_state(state: Sequence[float] | None, state_dim: int, dataset_name: str) -> np.ndarray:
    if state is None:
        raise InputError(
            f"--state_vector is required: give the robot's {state_dim} state values in robot units ({dataset_name})"
        )
    if len(state) != state_dim:
        raise InputError(f"--state_vector has {len(state)} values, the checkpoint expects {state_dim} ({dataset_name})")
    return np.asarray(state, dtype=np.float64)


def predict(args: argparse.Namespace) -> tuple[dict[str, Any], np.ndarray]:
    """-> (the JSON document, actions (H, A) float32)."""
    if args.save_predictions:  # before the model loads: fail fast
        check_output_dir(Path(args.output_dir))
    cameras = read_cameras(args.image1_paths, args.image2_paths)
    from pg_vla.policy import NonFiniteActionsError, Observation, Policy

    policy = Policy.from_checkpoint(
        args.checkpoint_path,
        device=args.device,
        dtype="bfloat16" if args.use_bf16 else None,
        dataset_name=args.dataset_name,
        verify=not args.no_verify,
    )
    images = match_cameras(cameras, policy.camera_roles)
    state = check_state(args.state_vector, policy.state_dim, policy.dataset_name)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    start = time.perf_counter()
    try:
        out = policy.infer(Observation(images=images, state=state, prompt=args.prompt), seed=seed)
    except NonFiniteActionsError as err:
        raise OutputError(f"{args.checkpoint_path}: {err}") from None
    infer_ms = (time.perf_counter() - start) * 1000.0
    actions = out["actions"]  # (H, A) float32, robot units
    paths = [args.image1_paths, args.image2_paths]
    document = {
        "checkpoint": str(args.checkpoint_path),
        "policy_name": policy.name,
        "dataset_name": policy.dataset_name,
        "prompt": args.prompt,
        "seed": seed,
        "state": state.tolist(),
        "images": {role: paths[i][0] for i, role in enumerate(policy.camera_roles)},
        "action_horizon": policy.horizon,
        "action_dim": policy.action_dim,
        "actions": actions.tolist(),
        "normalized_actions": out["normalized_actions"].tolist(),
        "infer_ms": round(infer_ms, 3),
    }
    return document, actions


def check_output_dir(output_dir: Path) -> None:
    """--output_dir must be a folder or creatable as one (no file in the way, on it or above it)."""
    for folder in (output_dir, *output_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise InputError(f"--output_dir {output_dir}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise InputError(f"--output_dir {output_dir}: {folder} is not writable")
            return


def save(document: dict[str, Any], actions: np.ndarray, output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"--output_dir {output_dir}: cannot create it: {err}") from None
    (output_dir / "prediction.json").write_text(json.dumps(document, indent=1) + "\n")
    np.save(output_dir / "actions.npy", actions)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with stdout_to_stderr() as stdout:
        try:
            document, actions = predict(args)
            if args.save_predictions:
                save(document, actions, Path(args.output_dir))
        except (InputError, FileNotFoundError, ValueError) as err:  # CheckpointError is a ValueError
            print(f"error: {err}", file=sys.stderr)
            return 2
        except OutputError as err:  # never print NaN actions (nor invalid JSON)
            print(f"error: {err}", file=sys.stderr)
            return 2
        stdout.write(json.dumps(document) + "\n")
    if args.save_predictions:
        print(f"wrote {Path(args.output_dir) / 'prediction.json'} and actions.npy", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
