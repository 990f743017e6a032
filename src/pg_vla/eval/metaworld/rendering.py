"""Fast offscreen rendering of a Meta-World scene from one camera (MuJoCo's own renderer, EGL on CPU).

Default MuJoCo rendering costs 62-114 ms per frame on a 2-core CPU (Mesa llvmpipe); with shadows,
reflections and multisampling off a 224x224 frame takes 7-10 ms and looks the same. Demonstrations
and evaluation both render through `SceneCamera`, so they see identical images.

The camera `corner4` looks at the table upside down: the frame is rotated by 180 degrees
(`img[::-1, ::-1]`; a vertical flip alone would mirror the scene).

A view is a camera and an optional square crop of its frame. `corner4_workspace` is corner4 cut to the
part of the table where the MT10 tasks' hands, objects and goals are (their projections over the experts'
episodes, with a margin): 0.64 of the frame's side, so small things such as a goal marker appear 1.56x
larger at the same image size. The crop is rendered directly at that scale (the camera renders a larger
frame and the window is cut out), so images are not resampled.

A process that has imported tensorflow segfaults when MuJoCo creates its EGL context, so
`SceneCamera` refuses to start in such a process.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_CAMERA = "corner4"
DEFAULT_IMAGE_SIZE = 224


@dataclass(frozen=True)
class View:
    camera: str  # a MuJoCo camera of the scene
    crop: tuple[float, float, float] | None = None  # (left, top, side) of the square window, fractions of the frame


VIEWS = {
    # union of the ten MT10 tasks' projected hand/object/goal positions over 15-20 expert episodes each:
    # x 65..194, y 60..161 of a 224 px frame; the window is x 58..202, y 38..182
    "corner4_workspace": View("corner4", (58 / 224, 38 / 224, 144 / 224)),
}


def get_view(name: str) -> View:
    """A named view, or the MuJoCo camera `name` uncropped."""
    return VIEWS.get(name, View(name))


def use_egl_by_default() -> None:
    """Select EGL offscreen rendering unless the user chose a backend; must run before mujoco is imported."""
    if "mujoco" not in sys.modules:
        os.environ.setdefault("MUJOCO_GL", "egl")


def check_no_tensorflow() -> None:
    if "tensorflow" in sys.modules:
        raise RuntimeError(
            "tensorflow is imported in this process: MuJoCo's EGL context would crash it. Render in a "
            "process that never imports tensorflow (e.g. a spawned worker)"
        )


class SceneCamera:
    """Renders (size, size, 3) uint8 RGB frames of a MuJoCo model/data pair from a view (`VIEWS`) or camera."""

    def __init__(
        self, model: Any, camera: str = DEFAULT_CAMERA, size: int = DEFAULT_IMAGE_SIZE, rotate_180: bool = True
    ):
        check_no_tensorflow()
        import mujoco

        view = get_view(camera)
        names = [model.camera(i).name for i in range(model.ncam)]
        if view.camera not in names:
            raise ValueError(f"camera {view.camera!r} not in the scene; cameras: {names}; views: {sorted(VIEWS)}")
        if size < 1:
            raise ValueError(f"image size must be >= 1, got {size}")
        full, self.window = size, None
        if view.crop is not None:
            left, top, side = view.crop
            full = math.ceil(size / side)
            self.window = (round(top * full), round(left * full), size)  # rows, columns, side in the full frame
        limit = min(model.vis.global_.offwidth, model.vis.global_.offheight)
        if full > limit:
            raise ValueError(
                f"image size {size} of view {camera!r} needs a {full} px frame, above the scene's offscreen "
                f"buffer of {limit} px"
            )
        self._mujoco = mujoco
        model.vis.quality.offsamples = 0  # no multisampling; read when the context is created
        self.renderer = mujoco.Renderer(model, full, full)
        self.camera, self.rotate_180 = view.camera, rotate_180

    def render(self, data: Any) -> np.ndarray:
        flags = self._mujoco.mjtRndFlag
        self.renderer.update_scene(data, camera=self.camera)
        self.renderer.scene.flags[flags.mjRND_SHADOW] = 0
        self.renderer.scene.flags[flags.mjRND_REFLECTION] = 0
        image = self.renderer.render()
        if self.rotate_180:
            image = image[::-1, ::-1]
        if self.window is not None:
            top, left, side = self.window
            image = image[top : top + side, left : left + side]
        return np.ascontiguousarray(image)

    def close(self) -> None:
        self.renderer.close()
