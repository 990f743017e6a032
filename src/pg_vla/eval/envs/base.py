"""The interface the evaluation agent drives: one task of one simulator, reset by seed.

    env = SomeEnv(task=..., ...)
    obs, instruction = env.reset(seed)          # seeds make initial states reproducible across processes
    result = env.step(action)                   # one environment action (what an adapter's postprocess gives)
    result.obs, result.success, result.done     # success: the task is solved at this step; done: the episode
                                                # ended (success, time limit or the simulator's own end)
    env.close()

Simulators import lazily inside their module, so `pg_vla.eval` stays importable without them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class StepResult:
    obs: Any
    success: bool
    done: bool
    # free-form; info["measures"] (name -> float) holds task measures the agent keeps for the episode's last step
    info: dict[str, Any] = field(default_factory=dict)


class EvalEnv(ABC):
    task: str
    max_steps: int

    @abstractmethod
    def reset(self, seed: int) -> tuple[Any, str]:
        """Start an episode whose initial state depends only on `seed` -> (observation, instruction)."""

    @abstractmethod
    def step(self, action: np.ndarray) -> StepResult:
        """Apply one environment action."""

    def close(self) -> None:  # noqa: B027 - an optional hook: environments without resources keep it
        """Release the simulator (renderers, processes)."""
