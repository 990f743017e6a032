"""The interface every environment adapter implements.

An adapter sits between a simulator (or robot) and `pg_vla.policy.Policy`:

    obs, instruction --preprocess--> Observation (camera images uint8, state in the dataset's units, prompt)
    Policy.infer(Observation)       -> action chunk (H, A) in the dataset's units (de-normalized)
    chunk --postprocess-->             one environment action per step (frame, rotation, gripper conventions)

Normalization with the training statistics happens inside `Policy`, so adapters only convert between
the simulator's conventions and the training dataset's. `reset()` clears per-episode state (e.g. a
sticky gripper); the evaluation agent calls it at the start of every episode and executes `act_steps`
of each chunk before asking the policy again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from pg_vla.policy import Observation


class EnvAdapter(ABC):
    def reset(self) -> None:  # noqa: B027 - an optional hook: adapters without per-episode state keep it
        """Forget per-episode state; called before each episode."""

    @abstractmethod
    def preprocess(self, env: Any, obs: Any, instruction: str) -> Observation:
        """Simulator observation -> the policy's observation (images, state in dataset units, prompt)."""

    @abstractmethod
    def postprocess(self, actions: np.ndarray) -> list[np.ndarray]:
        """Action chunk (H, A) in dataset units -> H environment actions, in order."""

    @abstractmethod
    def get_video_frame(self, env: Any, obs: Any) -> np.ndarray:
        """uint8 RGB frame (H, W, 3) for the episode video."""
