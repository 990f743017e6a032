"""A simulator suite: what the evaluation agent needs from one simulator, looked up by name.

    suite = get_suite("metaworld", **options)       # options: the config's `env` section minus name/tasks
    env = suite.make_env(task)                      # an EvalEnv (render=False: no camera, for blind replays)
    adapter = suite.make_adapter()                  # an EnvAdapter for pg_vla.policy.Policy
    expert = suite.make_expert(task)                # scripted expert: observation -> environment action
    suite.record_expert_actions(task, seed)         # the expert's actions on `seed`, for blind replays

Suites import their simulator lazily, so this module imports nothing heavy.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pg_vla.eval.adapters.base import EnvAdapter
from pg_vla.eval.envs.base import EvalEnv


class EnvSuite(ABC):
    name: str
    action_dim: int
    tasks: Sequence[str]  # the benchmark's default task list

    @abstractmethod
    def make_env(self, task: str, *, render: bool = True) -> EvalEnv: ...

    @abstractmethod
    def make_adapter(self) -> EnvAdapter: ...

    @abstractmethod
    def make_expert(self, task: str) -> Callable[[Any], np.ndarray]: ...

    @abstractmethod
    def record_expert_actions(self, task: str, seed: int) -> list[np.ndarray]: ...


SUITES: dict[str, str] = {
    "metaworld": "pg_vla.eval.metaworld.suite:MetaWorldSuite",
    "simpler": "pg_vla.eval.envs.simpler:SimplerSuite",
}


def get_suite(name: str, **options: Any) -> EnvSuite:
    if name not in SUITES:
        raise ValueError(f"unknown simulator suite {name!r}; known: {', '.join(sorted(SUITES))}")
    module, cls = SUITES[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)
