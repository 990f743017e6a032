"""The evaluation agent: a policy (checkpoint or baseline) in closed loop on a simulator suite.

    uv run scripts/run.py --config-path=../config/eval --config-name=metaworld \
        policy=checkpoint checkpoint_path=RUN_DIR env.tasks=[reach-v3] n_eval_episode=50 log_dir=DIR

For each task, episodes i = 0..n_eval_episode-1 start from seed `eval_seed_start + i`. `num_envs`
environments run in lock-step: whenever some of them have no planned actions left, the controller is
asked once for all of them (one batched `Policy.infer_batch` call for a checkpoint), and each
environment executes the actions it got (`act_steps` of a chunk) before asking again. An episode ends
at success or at the suite's step limit.

Writes to log_dir: episodes.jsonl (task, seed, success, steps, instruction per episode), summary.json
(`per_task` success rates in [0, 1], `mean` over tasks, the run's settings), videos/ (the first
`n_video` episodes of each task, named <task>_seed<seed>_<success|failure>) and success.png.
Nothing here imports tensorflow (the simulator's EGL renderer would crash it).
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pg_vla.eval.controllers import (
    POLICIES,
    CheckpointController,
    Controller,
    ExpertController,
    RandomController,
    ReplayController,
    Request,
    ZeroController,
)
from pg_vla.eval.envs.base import StepResult
from pg_vla.eval.report import EpisodeResult, JsonlWriter, plot_success, summarize, write_video
from pg_vla.eval.suite import EnvSuite, get_suite
from pg_vla.utils.configs import dataclass_from_dict


@dataclass
class EvalConfig:
    log_dir: str
    policy: str = "checkpoint"  # checkpoint | expert | zero | random | replay
    checkpoint_path: str | None = None  # checkpoint folder, a run's checkpoints/ folder or its log_dir
    env: dict[str, Any] = field(default_factory=lambda: {"name": "metaworld"})  # name, tasks, suite options
    n_eval_episode: int = 50  # per task
    eval_seed_start: int = 100_000
    act_steps: int | None = None  # actions of each chunk executed before predicting again (None: all)
    # temporal ensembling (pg_vla.eval.chunking): predict at every step and execute the exp(-k * i)-weighted
    # mean of the overlapping chunks' actions for that step (None: off; needs act_steps null or 1)
    temporal_ensemble_k: float | None = None
    n_video: int = 2  # videos of the first n_video episodes of each task
    video_fps: int = 20
    num_envs: int = 1  # environments in lock-step (batched inference)
    use_bf16: bool = False
    device: str = "cpu"
    seed: int = 0  # flow-matching noise and random baseline
    dataset_name: str | None = None  # statistics to de-normalize with when the checkpoint has several
    verify: bool = True  # check the checkpoint against its manifest.json before loading it
    replay_seed_offset: int = 1_000_000

    def __post_init__(self) -> None:
        self.env = dict(self.env)
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.policy == "checkpoint" and not self.checkpoint_path:
            raise ValueError("policy=checkpoint needs checkpoint_path=<checkpoint folder or run log_dir>")
        if not self.log_dir:
            raise ValueError("log_dir is not set")
        if "name" not in self.env:
            raise ValueError("env.name is not set (e.g. metaworld)")
        for name in ("n_eval_episode", "num_envs", "video_fps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_video < 0:
            raise ValueError(f"n_video must be >= 0, got {self.n_video}")
        if self.temporal_ensemble_k is not None and self.act_steps not in (None, 1):
            raise ValueError(
                f"temporal_ensemble_k predicts at every step: act_steps must be null or 1, got {self.act_steps}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalConfig":
        return dataclass_from_dict(cls, data, "evaluation")


def evaluate(cfg: Any) -> dict[str, Any]:
    """Hydra `_target_`: a DictConfig (or dict) of the evaluation run -> the summary."""
    from omegaconf import DictConfig, OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return Evaluator(EvalConfig.from_dict(data)).run()


@dataclass
class _Slot:
    """One of the lock-step environments and the episode it is running."""

    index: int
    env: Any = None
    task: str | None = None
    seed: int = 0
    episode: int = 0  # index within its task
    obs: Any = None
    instruction: str = ""
    steps: int = 0
    planned: deque = field(default_factory=deque)
    frames: list | None = None


class Evaluator:
    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg
        options = {k: v for k, v in cfg.env.items() if k not in ("name", "tasks")}
        self.suite: EnvSuite = get_suite(cfg.env["name"], **options)
        self.tasks = list(cfg.env.get("tasks") or self.suite.tasks)
        self.log_dir = Path(cfg.log_dir)
        self.adapters = [self.suite.make_adapter() for _ in range(cfg.num_envs)]

    def make_controller(self) -> Controller:
        cfg = self.cfg
        if cfg.policy == "checkpoint":
            from pg_vla.policy import Policy

            policy = Policy.from_checkpoint(
                cfg.checkpoint_path,
                device=cfg.device,
                dataset_name=cfg.dataset_name,
                dtype="bfloat16" if cfg.use_bf16 else None,
                verify=cfg.verify,
            )
            return CheckpointController(policy, self.adapters, cfg.act_steps, cfg.seed, cfg.temporal_ensemble_k)
        if cfg.policy == "expert":
            return ExpertController(self.suite)
        if cfg.policy == "zero":
            return ZeroController(self.suite.action_dim)
        if cfg.policy == "random":
            return RandomController(self.suite.action_dim, cfg.seed)
        return ReplayController(self.suite, cfg.replay_seed_offset)

    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        controller = self.make_controller()
        episodes = deque((task, i) for task in self.tasks for i in range(cfg.n_eval_episode))
        envs: dict[tuple[int, str, bool], Any] = {}  # (slot, task, renders) -> env, created on first use
        slots = [_Slot(i) for i in range(cfg.num_envs)]
        results: list[EpisodeResult] = []
        jsonl = JsonlWriter(self.log_dir / "episodes.jsonl")
        progress = tqdm(total=len(episodes), desc=f"eval {cfg.policy}", unit="episode", dynamic_ncols=True)
        tic = time.perf_counter()

        def start(slot: _Slot) -> bool:
            if not episodes:
                slot.task = None
                return False
            slot.task, slot.episode = episodes.popleft()
            render = controller.reads_images or slot.episode < cfg.n_video  # blind floors render only videos
            key = (slot.index, slot.task, render)
            if key not in envs:
                envs[key] = self.suite.make_env(slot.task, render=render)
            slot.env = envs[key]
            slot.seed = cfg.eval_seed_start + slot.episode
            slot.obs, slot.instruction = slot.env.reset(slot.seed)
            slot.steps, slot.planned = 0, deque()
            slot.frames = (
                [self.adapters[slot.index].get_video_frame(slot.env, slot.obs)] if slot.episode < cfg.n_video else None
            )
            controller.start_episode(slot.index, slot.task, slot.seed)
            return True

        def finish(slot: _Slot, step: StepResult) -> None:
            result = EpisodeResult(
                task=slot.task,
                seed=slot.seed,
                success=bool(step.success),
                steps=slot.steps,
                instruction=slot.instruction,
                final=dict(step.info.get("measures", {})),  # an environment's task measures, if it reports any
            )
            results.append(result)
            jsonl.write(result)
            if slot.frames is not None:
                outcome = "success" if result.success else "failure"
                write_video(
                    slot.frames, self.log_dir / "videos" / f"{slot.task}_seed{slot.seed}_{outcome}", cfg.video_fps
                )
            progress.update(1)
            progress.set_postfix(success=f"{np.mean([r.success for r in results]):.2f}")

        try:
            active = [slot for slot in slots if start(slot)]
            while active:
                waiting = [slot for slot in active if not slot.planned]
                if waiting:
                    requests = [Request(s.index, s.env, s.obs, s.instruction) for s in waiting]
                    for slot, actions in zip(waiting, controller.act(requests)):
                        if len(actions) == 0:
                            raise RuntimeError(f"the {cfg.policy} controller returned no action")
                        slot.planned.extend(actions)
                for slot in active:
                    step = slot.env.step(slot.planned.popleft())
                    slot.obs, slot.steps = step.obs, slot.steps + 1
                    if slot.frames is not None:
                        slot.frames.append(self.adapters[slot.index].get_video_frame(slot.env, slot.obs))
                    if step.done:
                        finish(slot, step)
                        start(slot)
                active = [slot for slot in slots if slot.task is not None]
        finally:
            progress.close()
            jsonl.close()
            for env in envs.values():
                env.close()

        summary = {
            **summarize(results, self.tasks),
            "policy": cfg.policy,
            "checkpoint_path": cfg.checkpoint_path,
            "suite": self.suite.name,
            "n_eval_episode": cfg.n_eval_episode,
            "eval_seed_start": cfg.eval_seed_start,
            "act_steps": cfg.act_steps,
            "temporal_ensemble_k": cfg.temporal_ensemble_k,
            "num_envs": cfg.num_envs,
            "seconds": round(time.perf_counter() - tic, 1),
            "config": asdict(cfg),
        }
        (self.log_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        title = f"{self.suite.name}, policy={cfg.policy}, {cfg.n_eval_episode} episodes per task"
        plot_success(summary, self.log_dir / "success.png", title)
        return {"per_task": summary["per_task"], "mean": summary["mean"]}
