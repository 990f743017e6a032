"""The Meta-World tasks of the benchmarks: instruction and scripted expert per task (no simulator import).

Two task lists:
    BENCHMARK_TASKS  the five-task suite (config/eval/metaworld.yaml, config/train/metaworld.yaml)
    MT10_TASKS       Meta-World's MT10 list, the ten-task suite (config/eval/metaworld_mt10.yaml)
"""

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
        MetaWorldTask("pick-place-v3", "pick up the puck and place it at the target", "SawyerPickPlaceV3Policy"),
        MetaWorldTask("door-open-v3", "open the door", "SawyerDoorOpenV3Policy"),
        MetaWorldTask("drawer-open-v3", "open the drawer", "SawyerDrawerOpenV3Policy"),
        MetaWorldTask("drawer-close-v3", "close the drawer", "SawyerDrawerCloseV3Policy"),
        MetaWorldTask(
            "peg-insert-side-v3", "insert the peg into the hole from the side", "SawyerPegInsertionSideV3Policy"
        ),
        MetaWorldTask("window-close-v3", "close the window", "SawyerWindowCloseV3Policy"),
    )
}
BENCHMARK_TASKS: tuple[str, ...] = (
    "reach-v3",
    "push-v3",
    "button-press-topdown-v3",
    "window-open-v3",
    "plate-slide-v3",
)
MT10_TASKS: tuple[str, ...] = (  # metaworld.env_dict.MT10_V3's order
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)


def get_task(name: str) -> MetaWorldTask:
    if name not in TASKS:
        raise ValueError(f"unknown Meta-World task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]
