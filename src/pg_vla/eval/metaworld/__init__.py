"""Meta-World closed-loop benchmark: seeded task environments, adapter, scripted demonstrations.

Importing this package does not import mujoco or metaworld; the environment modules do, lazily.
"""

from pg_vla.eval.metaworld.tasks import BENCHMARK_TASKS, MT10_TASKS, TASKS, MetaWorldTask, get_task

__all__ = ["BENCHMARK_TASKS", "MT10_TASKS", "TASKS", "MetaWorldTask", "get_task"]
