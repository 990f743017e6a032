"""The SimplerEnv client loop: simulator episodes with action chunks from the policy server.

    server = PolicyConnection.connect("127.0.0.1", 8000)         # openpi_client, metadata checked
    summary = run_evaluation(ClientConfig.from_dict(eval_cfg), server)

For each task, episode i starts from seed `eval_seed_start + i` (the layout's episode_id = seed % the
task's layouts where the env reads it, `pg_vla.eval.envs.simpler`). Each request sends the evaluation
camera's uint8 image, the proprio in the training dataset's units and the instruction:

    {"observation/image": uint8 (H, W, 3), "observation/state": float32 (P,), "prompt": str, "seed": int}

(the keys of config/serve/default.yaml; the server resizes the image for the model and de-normalizes
the chunk). The first `act_steps` actions of each chunk run before the next request. An episode ends at
the simulator's time limit (or at success with end_on_success: true); its success is the env's
info["success"] at the last step.

log_dir receives what the Meta-World evaluation writes: episodes.jsonl (task, seed, success, steps,
instruction per episode), summary.json (`per_task`, `mean`, the run's settings; plus `timing`: seconds
per env step, per request round trip and per control step in all, with make and reset times) and
videos/<task>_seed<seed>_<success|failure>.mp4 for the first n_video episodes of each task.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pg_vla.eval.envs.simpler import SIMPLER_TASKS, SimplerEnv, simpler_task
from pg_vla.eval.report import EpisodeResult, JsonlWriter, summarize, write_video
from pg_vla.eval.simpler.conventions import STICKY_GRIPPER_STEPS, SimplerConventions, conventions_for_robot

log = logging.getLogger("pg_vla.simpler")

RENDER_ENV_FILE = "pg_vla_simpler.env"  # written by scripts/setup_simpler.sh into the simulator venv
REQUEST_KEYS = {"image": "observation/image", "state": "observation/state", "prompt": "prompt", "seed": "seed"}


class ServerUnreachableError(ConnectionError):
    """No policy server answers at the given address."""


class ServerMismatchError(ValueError):
    """The served policy does not take what this robot's adapter sends (state size, action size, camera)."""


def load_render_env(prefix: str | os.PathLike | None = None) -> dict[str, str]:
    """Set the CPU-rendering variables of `<venv>/pg_vla_simpler.env` (if present) that are not set yet.

    Must run before SAPIEN creates its Vulkan instance (i.e. before the first simulator is made).
    -> the variables it set.
    """
    path = Path(prefix if prefix is not None else sys.prefix) / RENDER_ENV_FILE
    applied: dict[str, str] = {}
    if not path.is_file():
        return applied
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: expected KEY=VALUE lines, got {line!r}")
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied


@dataclass
class ClientConfig:
    """The eval config's keys the client reads (config/eval/bridge.yaml, fractal.yaml)."""

    log_dir: str
    env: dict[str, Any] = field(default_factory=lambda: {"robot": "widowx"})
    n_eval_episode: int = 24  # per task
    eval_seed_start: int = 0
    act_steps: int | None = None  # actions of each chunk executed before the next request (None: all)
    n_video: int = 2
    video_fps: int | None = None  # None: the task's control frequency
    seed: int | None = 0  # request noise seeds derive from it (None: the server draws fresh noise)
    dataset_name: str | None = None  # checked against the server's, when both are set

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientConfig:
        known = {f for f in cls.__dataclass_fields__}
        cfg = cls(**{k: v for k, v in data.items() if k in known})
        cfg.env = dict(cfg.env or {})
        robot = cfg.env.get("robot", "widowx")
        tasks = list(cfg.env.get("tasks") or [n for n, t in SIMPLER_TASKS.items() if t.robot == robot])
        for task in tasks:
            if simpler_task(task).robot != robot:  # also rejects unknown names
                raise ValueError(f"task {task!r} is a {simpler_task(task).robot} task; env.robot is {robot!r}")
        cfg.env["robot"], cfg.env["tasks"] = robot, tasks
        for name in ("n_eval_episode",):
            if int(getattr(cfg, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}")
        if cfg.act_steps is not None and int(cfg.act_steps) <= 0:
            raise ValueError(f"act_steps must be positive or null, got {cfg.act_steps}")
        if cfg.n_video < 0:
            raise ValueError(f"n_video must be >= 0, got {cfg.n_video}")
        return cfg

    @property
    def tasks(self) -> list[str]:
        return list(self.env["tasks"])

    @property
    def robot(self) -> str:
        return str(self.env["robot"])


def request_seed(base: int, episode_seed: int, request: int) -> int:
    """Noise seed of one request: a function of the run's seed, the episode's seed and the request index."""
    words = np.random.SeedSequence([int(base), int(episode_seed), int(request)]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])  # < 2**63


def make_request(
    conventions: SimplerConventions,
    obs: dict,
    instruction: str,
    seed: int | None = None,
    keys: dict[str, str] = REQUEST_KEYS,
) -> dict[str, Any]:
    """A SimplerEnv observation -> the policy server's request dict."""
    request: dict[str, Any] = {
        keys["image"]: conventions.image(obs),
        keys["state"]: conventions.state(obs),
        keys["prompt"]: str(instruction),
    }
    if seed is not None:
        request[keys["seed"]] = int(seed)
    return request


class PolicyConnection:
    """The openpi websocket client with the server's metadata checked against a robot's conventions."""

    def __init__(self, client: Any, uri: str, reconnect: Any = None):
        self.client = client
        self.uri = uri
        self.metadata: dict[str, Any] = dict(client.get_server_metadata())
        self._reconnect = reconnect  # -> a fresh client; used once when the connection dropped

    @classmethod
    def connect(cls, host: str, port: int, *, api_key: str | None = None, wait_s: float = 0.0) -> PolicyConnection:
        """Connect to scripts/serve_policy.py; waits up to wait_s seconds for it to listen."""
        deadline = time.monotonic() + max(0.0, float(wait_s))
        while True:
            try:
                with socket.create_connection((host, int(port)), timeout=5.0):
                    break
            except OSError as err:
                if time.monotonic() >= deadline:
                    raise ServerUnreachableError(
                        f"no policy server at ws://{host}:{port} ({err}); start one with "
                        "`uv run scripts/serve_policy.py --checkpoint_path CKPT --port PORT` "
                        "(or pass --wait_s to wait for it)"
                    ) from err
                time.sleep(0.5)
        from openpi_client.websocket_client_policy import WebsocketClientPolicy

        def open_client() -> Any:
            return WebsocketClientPolicy(host, int(port), api_key=api_key)

        return cls(open_client(), f"ws://{host}:{port}", reconnect=open_client)

    def check(
        self, conventions: SimplerConventions, dataset_name: str | None = None, keys: dict[str, str] = REQUEST_KEYS
    ) -> None:
        """Raise `ServerMismatchError` unless the served policy reads this robot's state and camera."""
        meta, robot = self.metadata, conventions.robot.name
        problems = []
        if meta.get("state_dim") not in (None, conventions.state_dim):
            problems.append(
                f"it reads {meta['state_dim']} state values, the {robot} sends "
                f"{conventions.state_dim} ({conventions.dataset_name} proprio)"
            )
        if meta.get("action_dim") not in (None, conventions.action_dim):
            problems.append(f"it returns {meta['action_dim']}-D actions, the {robot} takes {conventions.action_dim}")
        spec = meta.get("observation_spec")
        if spec is not None:
            for name in ("image", "state", "prompt"):
                if keys[name] not in spec:
                    problems.append(f"its requests have no {keys[name]!r} key (it reads {sorted(spec)})")
        if problems:
            raise ServerMismatchError(f"the policy at {self.uri} does not fit {robot} tasks: " + "; ".join(problems))
        served = meta.get("dataset_name")
        wanted = dataset_name or conventions.dataset_name
        if served and served != wanted:
            log.warning(
                "the server de-normalizes with %r statistics; %s tasks use %r (serve with --dataset_name)",
                served,
                robot,
                wanted,
            )

    def infer(self, request: dict[str, Any]) -> np.ndarray:
        from websockets.exceptions import ConnectionClosed

        try:
            response = self.client.infer(request)
        except ConnectionClosed as err:  # e.g. a keepalive timeout while a slow simulator was being built
            if self._reconnect is None:
                raise
            log.warning("the connection to %s closed (%s); reconnecting", self.uri, err)
            self.client = self._reconnect()
            response = self.client.infer(request)
        if "actions" not in response:
            raise RuntimeError(f"the policy server's answer has no 'actions' (keys: {sorted(response)})")
        return np.asarray(response["actions"], dtype=np.float64)


@dataclass
class Timing:
    """Wall-clock seconds: simulator make / reset / step and request round trips."""

    make_s: list[float] = field(default_factory=list)
    reset_s: list[float] = field(default_factory=list)
    env_step_s: list[float] = field(default_factory=list)
    request_s: list[float] = field(default_factory=list)
    control_steps: int = 0
    loop_s: float = 0.0  # the episodes' step loops in all (requests, conversions, steps, video frames)

    def summary(self) -> dict[str, Any]:
        def mean(values: list[float]) -> float | None:
            return round(float(np.mean(values)), 4) if values else None

        return {
            "per_step_s": round(self.loop_s / self.control_steps, 4) if self.control_steps else None,
            "env_step_s": mean(self.env_step_s),
            "request_s": mean(self.request_s),
            "requests": len(self.request_s),
            "control_steps": self.control_steps,
            "make_s": mean(self.make_s),
            "reset_s": mean(self.reset_s),
        }


def run_episode(
    env: SimplerEnv,
    conventions: SimplerConventions,
    server: PolicyConnection,
    seed: int,
    *,
    act_steps: int | None,
    noise_seed: int | None,
    timing: Timing,
    frames: list[np.ndarray] | None = None,
) -> EpisodeResult:
    tic = time.perf_counter()
    obs, instruction = env.reset(seed)
    conventions.reset()
    timing.reset_s.append(time.perf_counter() - tic)
    if frames is not None:
        frames.append(conventions.image(obs))
    planned: deque[np.ndarray] = deque()
    requests, steps, success = 0, 0, False
    loop_tic = time.perf_counter()
    while True:
        if not planned:
            seed_i = None if noise_seed is None else request_seed(noise_seed, seed, requests)
            request = make_request(conventions, obs, env.instruction, seed_i)
            tic = time.perf_counter()
            chunk = server.infer(request)
            timing.request_s.append(time.perf_counter() - tic)
            requests += 1
            actions = conventions.actions(chunk)
            planned.extend(actions[:act_steps] if act_steps else actions)
        tic = time.perf_counter()
        result = env.step(planned.popleft())
        timing.env_step_s.append(time.perf_counter() - tic)
        obs, steps, success = result.obs, steps + 1, result.success
        if frames is not None:
            frames.append(conventions.image(obs))
        if result.done:
            break
    timing.loop_s += time.perf_counter() - loop_tic
    timing.control_steps += steps
    return EpisodeResult(task=env.task, seed=int(seed), success=bool(success), steps=steps, instruction=instruction)


def run_evaluation(cfg: ClientConfig, server: PolicyConnection) -> dict[str, Any]:
    """Every task's episodes -> the summary (also written to log_dir/summary.json)."""
    env_options = cfg.env
    conventions = conventions_for_robot(
        cfg.robot, sticky_gripper_steps=int(env_options.get("sticky_gripper_steps") or STICKY_GRIPPER_STEPS)
    )
    server.check(conventions, cfg.dataset_name)
    log_dir = Path(cfg.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    jsonl = JsonlWriter(log_dir / "episodes.jsonl")
    results: list[EpisodeResult] = []
    timing = Timing()
    started = time.perf_counter()
    try:
        for task in cfg.tasks:
            tic = time.perf_counter()
            env = SimplerEnv(
                task,
                max_steps=env_options.get("max_steps"),
                end_on_success=bool(env_options.get("end_on_success", False)),
                reset_options=env_options.get("reset_options"),
            )
            timing.make_s.append(time.perf_counter() - tic)
            log.info("%s: made in %.1f s", task, timing.make_s[-1])
            try:
                for episode in range(cfg.n_eval_episode):
                    seed = cfg.eval_seed_start + episode
                    frames: list[np.ndarray] | None = [] if episode < cfg.n_video else None
                    result = run_episode(
                        env,
                        conventions,
                        server,
                        seed,
                        act_steps=cfg.act_steps,
                        noise_seed=cfg.seed,
                        timing=timing,
                        frames=frames,
                    )
                    results.append(result)
                    jsonl.write(result)
                    if frames is not None:
                        outcome = "success" if result.success else "failure"
                        write_video(
                            frames, log_dir / "videos" / f"{task}_seed{seed}_{outcome}", int(cfg.video_fps or env.fps)
                        )
                    log.info(
                        "%s seed %d: %s after %d steps (%s)",
                        task,
                        seed,
                        "success" if result.success else "failure",
                        result.steps,
                        result.instruction,
                    )
            finally:
                env.close()
    finally:
        jsonl.close()
    summary = {
        **summarize(results, cfg.tasks),
        "policy": "server",
        "server": server.uri,
        "checkpoint": server.metadata.get("policy_name"),
        "suite": "simpler",
        "n_eval_episode": cfg.n_eval_episode,
        "eval_seed_start": cfg.eval_seed_start,
        "act_steps": cfg.act_steps,
        "num_envs": 1,
        "seconds": round(time.perf_counter() - started, 1),
        "timing": timing.summary(),
        "config": asdict(cfg),
    }
    (log_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
