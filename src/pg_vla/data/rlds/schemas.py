"""Feature schemas (`tfds.features.FeaturesDict`) of the RLDS datasets pg-vla trains on.

Both follow the published Open X-Embodiment releases exactly: feature names, nesting, shapes,
dtypes, feature classes, image encodings and descriptions.

- `bridge_features`: BridgeData V2, `bridge_dataset` version 1.0.0. One episode is
  `{"steps": Dataset(step), "episode_metadata": {...}}`; a step holds four camera images
  (`observation/image_0..3`), the 7-d end-effector `state` (xyz, roll/pitch/yaw, gripper opening),
  the 7-d `action` (delta xyz, delta roll/pitch/yaw, gripper: 1 open, 0 closed), the language
  instruction and its 512-d embedding, and the RLDS flags/reward/discount.
- `fractal_features`: fractal / RT-1, `fractal20220817_data` version 0.1.0. One episode is
  `{"steps": Dataset(step), "aspects": {...}, "attributes": {...}}` (no `episode_metadata`); a step
  holds a dict `action` (world_vector, rotation_delta, gripper_closedness_action, ...), a dict
  `observation` (image, base_pose_tool_reached = xyz + quaternion xyzw, gripper_closed, ...) and
  the RLDS flags and reward (no `discount`).

TensorFlow is imported when a schema is built, not when this module is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

BRIDGE_NAME = "bridge_dataset"
BRIDGE_VERSION = "1.0.0"
BRIDGE_IMAGE_KEYS = ("image_0", "image_1", "image_2", "image_3")
BRIDGE_IMAGE_SIZE = (256, 256)

FRACTAL_NAME = "fractal20220817_data"
FRACTAL_VERSION = "0.1.0"
FRACTAL_IMAGE_SIZE = (256, 320)
FRACTAL_ATTRIBUTE_NAMES = ("collection_mode", "data_type", "env", "location", "objects_family", "task_family")
"""Integer fields of the fractal `attributes` dict; each also has a string `<name>_name` field."""

LANGUAGE_EMBEDDING_DIM = 512


def _check_size(image_size: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive (height, width), got {image_size}")
    return height, width


def bridge_features(image_size: tuple[int, int] = BRIDGE_IMAGE_SIZE) -> "tfds.features.FeaturesDict":
    """The `bridge_dataset` 1.0.0 schema, with camera images of `image_size` = (height, width)."""
    import numpy as np
    import tensorflow_datasets as tfds

    f = tfds.features
    height, width = _check_size(image_size)

    def image() -> f.Image:
        return f.Image(
            shape=(height, width, 3), dtype=np.uint8, encoding_format="jpeg", doc="Main camera RGB observation."
        )

    def flag(doc: str) -> f.Scalar:
        return f.Scalar(dtype=np.bool_, doc=doc)

    step = f.FeaturesDict(
        {
            "observation": f.FeaturesDict(
                {
                    **{key: image() for key in BRIDGE_IMAGE_KEYS},
                    "state": f.Tensor(
                        shape=(7,),
                        dtype=np.float32,
                        doc="Robot state, consists of [7x robot joint angles, 2x gripper position, "
                        "1x door opening angle].",
                    ),
                }
            ),
            "action": f.Tensor(
                shape=(7,),
                dtype=np.float32,
                doc="Robot action, consists of [7x joint velocities, 2x gripper velocities, 1x terminate episode].",
            ),
            "discount": f.Scalar(dtype=np.float32, doc="Discount if provided, default to 1."),
            "reward": f.Scalar(dtype=np.float32, doc="Reward if provided, 1 on final step for demos."),
            "is_first": flag("True on first step of the episode."),
            "is_last": flag("True on last step of the episode."),
            "is_terminal": flag("True on last step of the episode if it is a terminal step, True for demos."),
            "language_instruction": f.Text(doc="Language Instruction."),
            "language_embedding": f.Tensor(
                shape=(LANGUAGE_EMBEDDING_DIM,),
                dtype=np.float32,
                doc="Kona language embedding. See https://tfhub.dev/google/universal-sentence-encoder-large/5",
            ),
        }
    )
    metadata = f.FeaturesDict(
        {
            "file_path": f.Text(doc="Path to the original data file."),
            "episode_id": f.Scalar(dtype=np.int32, doc="ID of episode in file_path."),
            "has_language": flag("True if language exists in observation, otherwise empty string."),
            **{
                f"has_image_{k}": flag(f"True if image{k} exists in observation, otherwise dummy value.")
                for k in range(len(BRIDGE_IMAGE_KEYS))
            },
        }
    )
    return f.FeaturesDict({"steps": f.Dataset(step), "episode_metadata": metadata})


def fractal_features(image_size: tuple[int, int] = FRACTAL_IMAGE_SIZE) -> "tfds.features.FeaturesDict":
    """The `fractal20220817_data` 0.1.0 schema, with camera images of `image_size` = (height, width)."""
    import numpy as np
    import tensorflow_datasets as tfds

    f = tfds.features
    height, width = _check_size(image_size)

    def vec(*shape: int, doc: str | None = None) -> f.Tensor:
        return f.Tensor(shape=shape, dtype=np.float32, doc=doc)

    def scalar(dtype) -> f.Tensor:
        # The release stores these as plain scalar Tensors (not `Scalar`, not `Text`).
        return f.Tensor(shape=(), dtype=dtype)

    action = f.FeaturesDict(
        {
            "world_vector": vec(3, doc="commanded end-effector displacement, in base-relative frame"),
            "rotation_delta": vec(3, doc="rpy commanded orientation displacement, in base-relative frame"),
            "gripper_closedness_action": vec(1, doc="continuous gripper position"),
            "terminate_episode": f.Tensor(shape=(3,), dtype=np.int32),
            "base_displacement_vector": vec(2),
            "base_displacement_vertical_rotation": vec(1),
        }
    )
    observation = f.FeaturesDict(
        {
            "image": f.Image(shape=(height, width, 3), dtype=np.uint8, encoding_format="jpeg"),
            "natural_language_embedding": vec(LANGUAGE_EMBEDDING_DIM),
            "natural_language_instruction": scalar(np.str_),
            "base_pose_tool_reached": vec(7, doc="end-effector base-relative position+quaternion pose"),
            "gripper_closed": vec(1),
            "gripper_closedness_commanded": vec(1, doc="continuous gripper position"),
            "height_to_bottom": vec(1, doc="height of end-effector from ground"),
            "orientation_box": vec(2, 3),
            "orientation_start": vec(4),
            "robot_orientation_positions_box": vec(3, 3),
            "rotation_delta_to_go": vec(3, doc="rotational displacement from current orientation to target"),
            "src_rotation": vec(4),
            "vector_to_go": vec(3, doc="displacement from current end-effector position to target"),
            "workspace_bounds": vec(3, 3),
        }
    )
    step = f.FeaturesDict(
        {
            "action": action,
            "observation": observation,
            "is_first": scalar(np.bool_),
            "is_last": scalar(np.bool_),
            "is_terminal": scalar(np.bool_),
            "reward": f.Scalar(dtype=np.float32),
        }
    )
    aspects = f.FeaturesDict(
        {name: scalar(np.bool_) for name in ("already_success", "feasible", "has_aspects", "success", "undesirable")},
        doc="Session Aspects for crowdcompute ratings",
    )
    attributes = f.FeaturesDict(
        {
            **{name: scalar(np.int64) for name in FRACTAL_ATTRIBUTE_NAMES},
            **{f"{name}_name": scalar(np.str_) for name in FRACTAL_ATTRIBUTE_NAMES},
        }
    )
    return f.FeaturesDict({"steps": f.Dataset(step), "aspects": aspects, "attributes": attributes})
