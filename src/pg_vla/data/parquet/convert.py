"""RLDS -> Parquet: an RLDS split's standardized steps, one row per step (imports tensorflow).

Each episode is read in file order (the order of an ordered RLDS pass) and standardized exactly as
the RLDS pipeline does before normalization (`pg_vla.data.rlds.standardize`): for bridge the
gripper is binarized, the movement relabeled and the last step dropped; for fractal the relative
gripper command is made absolute. Rows hold the camera images as their stored encoded bytes
(`image_1` <- the dataset's `primary` camera, `image_2` <- `image_2_role`), `state` = the
standardized proprio, `action`, `prompt` = the step's language instruction, `episode_id` = the
RLDS `tfds_id`, and `is_terminal` True on the last row when the raw episode ended in a terminal step.
Episodes left empty by standardization are not written; unlabeled ones are (the loader skips them
unless `skip_unlabeled=False`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from pg_vla.data.parquet.writer import ParquetEpisodeWriter
from pg_vla.data.rlds.dataset_configs import get_dataset_config


def default_image_2_role(available: Iterable[str]) -> str | None:
    """The wrist camera when the dataset has one (`available` camera roles), else the secondary camera, else none."""
    return next((role for role in ("wrist", "secondary") if role in set(available)), None)


def open_split(
    data_path: str | Path, dataset_name: str, split: str, roles: tuple[str, ...] | None, max_episodes: int | None
):
    """(dataset config, TFDS builder, camera roles) of an RLDS split to convert, its cameras and arguments
    checked; roles None: every camera the split has (the primary one at least)."""
    from pg_vla.data.rlds.pipeline import available_camera_roles, open_builder

    cfg = get_dataset_config(dataset_name)
    missing = [role for role in roles or () if cfg.image_keys.get(role) is None]
    if missing:
        raise ValueError(f"{dataset_name} has no camera for the role(s) {missing}; cameras: {cfg.image_keys}")
    if max_episodes is not None and max_episodes < 1:
        raise ValueError(f"max_episodes must be >= 1, got {max_episodes}")
    builder = open_builder(data_path, cfg, ("primary",) if roles is None else roles)
    if split not in builder.info.splits:
        raise ValueError(f"{dataset_name} has no split {split!r}; splits: {sorted(builder.info.splits)}")
    return cfg, builder, available_camera_roles(builder, cfg) if roles is None else tuple(roles)


def convert_rlds_to_parquet(
    data_path: str | Path,
    dataset_name: str,
    split: str,
    output_dir: str | Path,
    *,
    rows_per_group: int = 1024,
    rows_per_file: int | None = 100_000,
    max_episodes: int | None = None,
    image_2_role: str | None = "default",
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write `<output_dir>/<dataset_name>-<split>-NNNNN.parquet`; returns the files."""
    import tensorflow as tf

    from pg_vla.data.rlds.pipeline import read_trajectories
    from pg_vla.data.rlds.standardize import standardize

    def cameras(image_2: str | None) -> tuple[str, ...]:
        return ("primary",) + ((image_2,) if image_2 else ())

    default = image_2_role == "default"
    cfg, builder, available = open_split(
        data_path, dataset_name, split, None if default else cameras(image_2_role), max_episodes
    )
    image_2_role = default_image_2_role(available) if default else image_2_role
    roles = cameras(image_2_role)
    say = log or (lambda message: None)

    def prepare(traj: dict) -> dict:
        out = standardize(traj, cfg)
        obs = out["observation"]
        return {
            "image_1": obs["image_primary"],
            "image_2": obs[f"image_{image_2_role}"] if image_2_role else tf.zeros([0], tf.string),
            "state": obs["proprio"],
            "action": out["action"],
            "prompt": out["language_instruction"],
            "tfds_id": traj["tfds_id"],
            "terminal": tf.reduce_any(tf.cast(traj["is_terminal"], tf.bool)),
        }

    ds = read_trajectories(builder, cfg, split, shuffle=False, read_threads=1, seed=0, camera_roles=roles)
    ds = ds.map(prepare).filter(lambda t: tf.shape(t["action"])[0] > 0)
    if max_episodes is not None:
        ds = ds.take(max_episodes)
    count = 0
    with ParquetEpisodeWriter(
        output_dir, prefix=f"{dataset_name}-{split}", rows_per_group=rows_per_group, rows_per_file=rows_per_file
    ) as writer:
        for episode in ds.as_numpy_iterator():
            writer.add_episode(
                image_1=list(episode["image_1"]),
                state=episode["state"],
                action=episode["action"],
                prompt=[p.decode() for p in episode["prompt"]],
                episode_id=episode["tfds_id"].decode(),
                image_2=list(episode["image_2"]) if image_2_role else None,
                terminal=bool(episode["terminal"]),
            )
            count += 1
            if count % 1000 == 0:
                say(f"{count} episodes")
    say(
        f"wrote {count} episodes to {len(writer.files)} file(s) in {output_dir} "
        f"(image_1 <- primary, image_2 <- {image_2_role})"
    )
    return writer.files
