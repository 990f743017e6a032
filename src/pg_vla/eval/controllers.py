"""What decides the actions during evaluation: a trained policy or a baseline.

Every controller answers a batch of requests (one per environment waiting for actions) with a list of
environment actions per request, which the agent executes before asking again:

    checkpoint  pg_vla.policy.Policy on the adapter's observation (with its per-episode history when the
                model reads one); the chunk is postprocessed by the adapter and its first `act_steps`
                actions run (all by default), or, with temporal ensembling, the ensembled action of the
                overlapping chunks, one per step
    expert      the suite's scripted expert, one action at a time (reads the full simulator state)
    zero        all-zero actions (the do-nothing floor)
    random      uniform actions in [-1, 1], seeded by the episode seed
    replay      the expert's recorded actions on another seed (episode seed + replay_seed_offset),
                replayed blindly, then zeros: the floor of a policy that ignores the observation
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pg_vla.eval.adapters.base import EnvAdapter
from pg_vla.eval.chunking import TemporalEnsemble
from pg_vla.eval.envs.base import EvalEnv
from pg_vla.eval.suite import EnvSuite

POLICIES = ("checkpoint", "expert", "zero", "random", "replay")


@dataclass
class Request:
    slot: int  # which parallel environment
    env: EvalEnv
    obs: Any
    instruction: str


class Controller(ABC):
    # False: the controller never looks at the camera, so its episodes run without rendering, except
    # the ones recorded as videos
    reads_images = True

    def start_episode(self, slot: int, task: str, seed: int) -> None:  # noqa: B027 - an optional hook
        """A new episode begins in environment `slot`."""

    @abstractmethod
    def act(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        """-> for each request, the environment actions to execute next (at least one)."""


class CheckpointController(Controller):
    """A `Policy` on the adapters' observations. A model with image/state history (cond_steps > 1) reads
    a rolling per-episode `ObservationHistory` of each environment. With `temporal_ensemble_k` the policy
    is asked at every step and the step's action is the ensemble of the overlapping chunks
    (`pg_vla.eval.chunking.TemporalEnsemble`); otherwise the first `act_steps` actions of each chunk run."""

    def __init__(
        self,
        policy: Any,
        adapters: Sequence[EnvAdapter],
        act_steps: int | None,
        seed: int,
        temporal_ensemble_k: float | None = None,
    ):
        from pg_vla.policy import ObservationHistory

        if act_steps is not None and not 1 <= act_steps <= policy.horizon:
            raise ValueError(f"act_steps must be in 1..{policy.horizon} (the policy's horizon), got {act_steps}")
        if temporal_ensemble_k is not None and act_steps not in (None, 1):
            raise ValueError(
                f"temporal ensembling predicts at every step: act_steps must be None or 1, got {act_steps}"
            )
        self.policy, self.adapters = policy, list(adapters)
        self.act_steps = 1 if temporal_ensemble_k is not None else act_steps or policy.horizon
        self.seed, self.calls = seed, 0
        self.histories = [ObservationHistory(policy.config.cond_steps) for _ in self.adapters]
        self.ensembles = (
            [TemporalEnsemble(policy.horizon, temporal_ensemble_k) for _ in self.adapters]
            if temporal_ensemble_k is not None
            else None
        )

    def start_episode(self, slot: int, task: str, seed: int) -> None:
        self.adapters[slot].reset()
        self.histories[slot].reset()
        if self.ensembles is not None:
            self.ensembles[slot].reset()

    def act(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        observations = [
            self.histories[r.slot].push(self.adapters[r.slot].preprocess(r.env, r.obs, r.instruction)) for r in requests
        ]
        chunks = self.policy.infer_batch(observations, seed=self.seed + self.calls)["actions"]  # (B, H, A)
        self.calls += 1
        if self.ensembles is not None:
            chunks = [self.ensembles[r.slot].step(chunk)[None].astype(np.float32) for r, chunk in zip(requests, chunks)]
        # only the executed steps go through postprocess: stateful adapters (a sticky gripper) count them
        return [self.adapters[r.slot].postprocess(chunk[: self.act_steps]) for r, chunk in zip(requests, chunks)]


class ExpertController(Controller):
    reads_images = False

    def __init__(self, suite: EnvSuite):
        self.suite = suite
        self.experts: dict[int, Any] = {}

    def start_episode(self, slot: int, task: str, seed: int) -> None:
        self.experts[slot] = self.suite.make_expert(task)

    def act(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        return [[self.experts[r.slot](r.obs)] for r in requests]


class ZeroController(Controller):
    reads_images = False

    def __init__(self, action_dim: int):
        self.action = np.zeros(action_dim, dtype=np.float32)

    def act(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        return [[self.action.copy()] for _ in requests]


class RandomController(Controller):
    reads_images = False

    def __init__(self, action_dim: int, seed: int):
        self.action_dim, self.seed = action_dim, seed
        self.rngs: dict[int, np.random.Generator] = {}

    def start_episode(self, slot: int, task: str, seed: int) -> None:
        self.rngs[slot] = np.random.default_rng([self.seed, seed])

    def act(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        return [[self.rngs[r.slot].uniform(-1.0, 1.0, self.action_dim).astype(np.float32)] for r in requests]


class ReplayController(Controller):
    reads_images = False

    def __init__(self, suite: EnvSuite, seed_offset: int):
        if seed_offset == 0:
            raise ValueError("replay_seed_offset must not be 0: the replayed actions must come from another seed")
        self.suite, self.seed_offset = suite, seed_offset
        self.queues: dict[int, list[np.ndarray]] = {}

    def start_episode(self, slot: int, task: str, seed: int) -> None:
        self.queues[slot] = list(self.suite.record_expert_actions(task, seed + self.seed_offset))

    def act(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        out = []
        for r in requests:
            queue = self.queues[r.slot]
            out.append([queue.pop(0)] if queue else [np.zeros(self.suite.action_dim, dtype=np.float32)])
        return out
