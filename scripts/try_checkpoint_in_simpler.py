"""Run one SimplerEnv episode with a pg-vla checkpoint: a quick look before a full evaluation.

Usage:
    uv run scripts/try_checkpoint_in_simpler.py --task widowx_carrot_on_plate \
        --checkpoint_path runs/bridge/checkpoints/step_019296 --recording [--use_bf16] [--use_torch_compile]
    uv run scripts/try_checkpoint_in_simpler.py --task google_robot_pick_horizontal_coke_can \
        --checkpoint_path runs/fractal --seed 3 --output_dir runs/try_simpler --recording

WidowX tasks use the bridge adapter and statistics, Google robot tasks the fractal ones
(`pg_vla.eval.adapters.simpler`). Each policy call predicts a chunk; the first `--act_steps` actions run
before the next call (default: the whole chunk for bridge, 2 for fractal, as open-pi-zero found best).
Prints one JSON line (task, instruction, success, steps, video); with --recording writes
<output_dir>/<task>_seed<S>_<success|failure>.mp4 (needs the imageio-ffmpeg package; a .gif otherwise).
SimplerEnv must be installed from source (see README, "Evaluation in SimplerEnv"); the script stops with
the installation steps when it is missing.
"""

from __future__ import annotations

from pg_vla.utils import quiet

quiet.configure()  # before the libraries load: TF/absl logging, known warnings, --verbose

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pg_vla.eval.adapters.simpler import SimplerAdapter, adapter_for_task
from pg_vla.eval.envs.simpler import SIMPLER_TASKS, SimplerEnv, SimplerEnvNotInstalledError, simpler_task

DEFAULT_ACT_STEPS = {"widowx": 4, "google_robot": 2}


def run_episode(policy: Any, env: SimplerEnv, adapter: SimplerAdapter, *, seed: int, act_steps: int | None = None,
                record: bool = False) -> dict[str, Any]:
    """One episode: reset by seed, then policy chunk -> first act_steps actions -> env, until done.

    Only the executed actions go through `adapter.postprocess`, so per-step adapter state (the sticky
    gripper) advances once per executed step. success is the last step's.
    """
    act_steps = act_steps or policy.horizon
    if not 1 <= act_steps <= policy.horizon:
        raise ValueError(f"act_steps must be in [1, {policy.horizon}], got {act_steps}")
    adapter.reset()
    obs, instruction = env.reset(seed)
    frames = [adapter.get_video_frame(env, obs)] if record else []
    success, done, steps, calls, infer_s = False, False, 0, 0, 0.0
    while not done:
        start = time.perf_counter()
        chunk = policy.infer(adapter.preprocess(env, obs, instruction))["actions"]  # (H, A) dataset units
        infer_s += time.perf_counter() - start
        calls += 1
        for action in adapter.postprocess(chunk[:act_steps]):
            result = env.step(action)
            obs, success, done, steps = result.obs, result.success, result.done, steps + 1
            instruction = result.info.get("instruction", instruction)
            if record:
                frames.append(adapter.get_video_frame(env, obs))
            if done:
                break
    return {"task": env.task, "seed": seed, "instruction": instruction, "success": bool(success), "steps": steps,
            "policy_calls": calls, "mean_infer_ms": 1000.0 * infer_s / max(calls, 1), "frames": frames}


def write_video(frames: Sequence[np.ndarray], path: Path, fps: int) -> Path:
    """mp4 through imageio's ffmpeg plugin; a GIF (Pillow) when imageio-ffmpeg is not installed."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [np.asarray(frame, dtype=np.uint8) for frame in frames]
    try:
        imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
        return path
    except (ImportError, ValueError, RuntimeError) as err:  # no ffmpeg backend for mp4
        gif = path.with_suffix(".gif")
        print(f"cannot write mp4 ({err}); install imageio-ffmpeg for mp4. Writing {gif} instead", file=sys.stderr)
        imageio.mimsave(gif, frames, duration=1000.0 / fps, loop=0)
        return gif


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(SIMPLER_TASKS))
    parser.add_argument("--checkpoint_path", required=True, help="checkpoint folder, a run's checkpoints/ or log_dir")
    parser.add_argument("--recording", action="store_true", help="save a video of the episode")
    parser.add_argument("--use_bf16", action="store_true", help="bfloat16 weights")
    parser.add_argument("--use_torch_compile", action="store_true", help="torch.compile (the first call is slow)")
    parser.add_argument("--seed", type=int, default=0, help="episode seed (initial state) and flow-noise seed")
    parser.add_argument("--output_dir", default="runs/try_simpler")
    parser.add_argument("--act_steps", type=int, default=None, help="actions run per chunk (default per robot)")
    parser.add_argument("--max_steps", type=int, default=None, help="episode length (default per task)")
    parser.add_argument("--run_to_time_limit", action="store_true",
                        help="do not stop at the first success; report success at the last step "
                             "(SimplerEnv's protocol)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--no_verify", action="store_true",
                        help="skip checking the checkpoint against its manifest.json (sha256 of every file)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    robot = simpler_task(args.task).robot
    adapter = adapter_for_task(args.task)
    try:
        env = SimplerEnv(args.task, max_steps=args.max_steps, end_on_success=not args.run_to_time_limit)
    except SimplerEnvNotInstalledError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    import torch

    from pg_vla.policy import Policy, resolve_checkpoint_folder
    from pg_vla.checkpoint_folder import STATISTICS_DIR
    from pg_vla.utils.devices import resolve_device

    torch.manual_seed(args.seed)
    try:
        device = resolve_device(args.device)
        folder = resolve_checkpoint_folder(args.checkpoint_path, verify=not args.no_verify)
        available = {path.stem for path in (folder / STATISTICS_DIR).glob("*.json")}
        # this robot's dataset statistics when the run has them (a mix); otherwise the run's only statistics
        dataset_name = adapter.dataset_name if adapter.dataset_name in available else None
        policy = Policy.from_checkpoint(folder, device=device, dtype="bfloat16" if args.use_bf16 else "float32",
                                        compile=args.use_torch_compile, dataset_name=dataset_name, verify=False)
    except (FileNotFoundError, ValueError) as err:  # CheckpointError is a ValueError
        env.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    if policy.state_dim != adapter.state_dim:
        print(f"error: the checkpoint's {policy.dataset_name} statistics have proprio dim {policy.state_dim}; the "
              f"{robot} adapter gives {adapter.state_dim} ({adapter.dataset_name})", file=sys.stderr)
        return 2
    try:
        result = run_episode(policy, env, adapter, seed=args.seed,
                             act_steps=args.act_steps or min(DEFAULT_ACT_STEPS[robot], policy.horizon),
                             record=args.recording)
    finally:
        env.close()
    frames = result.pop("frames")
    if args.recording:
        outcome = "success" if result["success"] else "failure"
        name = f"{args.task}_seed{args.seed}_{outcome}.mp4"
        result["video"] = str(write_video(frames, Path(args.output_dir) / name, fps=env.fps))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
