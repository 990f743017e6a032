"""The Meta-World suite for the evaluation agent (see `pg_vla.eval.suite`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pg_vla.eval.metaworld.adapter import MetaWorldAdapter
from pg_vla.eval.metaworld.env import (
    ACTION_DIM,
    DEFAULT_MAX_STEPS,
    MetaWorldEnv,
    MetaWorldObservation,
    ScriptedExpert,
    record_expert_actions,
)
from pg_vla.eval.metaworld.rendering import DEFAULT_CAMERA, DEFAULT_IMAGE_SIZE
from pg_vla.eval.metaworld.tasks import BENCHMARK_TASKS, get_task
from pg_vla.eval.suite import EnvSuite


class MetaWorldSuite(EnvSuite):
    name = "metaworld"
    action_dim = ACTION_DIM
    tasks = BENCHMARK_TASKS

    def __init__(
        self,
        max_steps: int = DEFAULT_MAX_STEPS,
        image_size: int = DEFAULT_IMAGE_SIZE,
        camera: str = DEFAULT_CAMERA,
        secondary_camera: str | None = None,
    ):
        self.max_steps, self.image_size, self.camera = int(max_steps), int(image_size), camera
        self.secondary_camera = secondary_camera

    def make_env(self, task: str, *, render: bool = True) -> MetaWorldEnv:
        get_task(task)
        return MetaWorldEnv(
            task,
            max_steps=self.max_steps,
            image_size=self.image_size,
            camera=self.camera,
            secondary_camera=self.secondary_camera,
            render=render,
        )

    def make_adapter(self) -> MetaWorldAdapter:
        return MetaWorldAdapter()

    def make_expert(self, task: str) -> Callable[[MetaWorldObservation], np.ndarray]:
        return ScriptedExpert(task)

    def record_expert_actions(self, task: str, seed: int) -> list[np.ndarray]:
        return record_expert_actions(task, seed, self.max_steps)
