"""The Meta-World tasks of the benchmark: instruction and scripted expert per task (no simulator import)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetaWorldTask:
    name: str  # Meta-World v3 environment name
    instruction: str  # the language prompt the policy reads
    expert: str  # class name in metaworld.policies


TASKS: dict[str, MetaWorldTask] = {
    task.name: task
    for task in (
        MetaWorldTask("reach-v3", "reach the red target", "SawyerReachV3Policy"),
        MetaWorldTask("push-v3", "push the puck to the green target", "SawyerPushV3Policy"),
        MetaWorldTask("button-press-topdown-v3", "press the button from above", "SawyerButtonPressTopdownV3Policy"),
        MetaWorldTask("window-open-v3", "open the window", "SawyerWindowOpenV3Policy"),
        MetaWorldTask("plate-slide-v3", "slide the plate into the net", "SawyerPlateSlideV3Policy"),
    )
}
BENCHMARK_TASKS: tuple[str, ...] = tuple(TASKS)


def get_task(name: str) -> MetaWorldTask:
    if name not in TASKS:
        raise ValueError(f"unknown Meta-World task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]
