"""RLDS -> LeRobot v3.0: an RLDS split's standardized steps as a LeRobot folder (imports tensorflow).

Episodes are read in file order (the order of an ordered RLDS pass) and standardized as the RLDS
pipeline does before normalization (`pg_vla.data.rlds.standardize`, as the Parquet converter does).
Features: `observation.state` (the standardized proprio), `action`, one camera feature
`observation.images.<role>` per camera role, the step's language instruction as its task. Cameras
are written as mp4 (`video=True`, AV1 by default; frames decoded as TensorFlow decodes them) or as
their stored encoded bytes in the parquet (`video=False`, lossless: the loader then gives the RLDS
pixels exactly). Episodes left empty by standardization are not written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pg_vla.data.lerobot.writer import LeRobotWriter


def camera_key(role: str) -> str:
    return f"observation.images.{role}"


def convert_rlds_to_lerobot(
    data_path: str | Path,
    dataset_name: str,
    split: str,
    output_dir: str | Path,
    *,
    camera_roles: tuple[str, ...] | None = None,
    video: bool = True,
    fps: int = 5,
    codec: str = "libsvtav1",
    codec_options: dict | None = None,
    frames_per_file: int = 100_000,
    max_episodes: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write the folder `output_dir`; returns it. `camera_roles` default: every camera the dataset has."""
    import tensorflow as tf

    from pg_vla.data.parquet.convert import open_split
    from pg_vla.data.parquet.images import decode_rgb
    from pg_vla.data.rlds.pipeline import read_trajectories
    from pg_vla.data.rlds.standardize import standardize

    requested = tuple(camera_roles) if camera_roles else None
    cfg, builder, roles = open_split(data_path, dataset_name, split, requested, max_episodes)
    say = log or (lambda message: None)

    def prepare(traj: dict) -> dict:
        out = standardize(traj, cfg)
        obs = out["observation"]
        return {
            "images": {role: obs[f"image_{role}"] for role in roles},
            "state": obs["proprio"],
            "action": out["action"],
            "prompt": out["language_instruction"],
        }

    ds = read_trajectories(builder, cfg, split, shuffle=False, read_threads=1, seed=0, camera_roles=roles)
    ds = ds.map(prepare).filter(lambda t: tf.shape(t["action"])[0] > 0)
    if max_episodes is not None:
        ds = ds.take(max_episodes)
    options = {} if codec_options is None else {"codec_options": dict(codec_options)}
    writer = LeRobotWriter(
        output_dir,
        fps=fps,
        cameras=tuple(camera_key(r) for r in roles),
        video=video,
        codec=codec,
        frames_per_data_file=frames_per_file,
        frames_per_video_file=frames_per_file,
        **options,
    )
    for count, episode in enumerate(ds.as_numpy_iterator(), 1):
        images = {
            camera_key(role): [decode_rgb(b) if video else bytes(b) for b in episode["images"][role]] for role in roles
        }
        writer.add_episode(episode["state"], episode["action"], [p.decode() for p in episode["prompt"]], images)
        if count % 1000 == 0:
            say(f"{count} episodes")
    writer.close()
    say(
        f"wrote {len(writer.episodes)} episodes ({writer.total} frames) to {output_dir} "
        f"(cameras {', '.join(camera_key(r) for r in roles)}, "
        f"{'video ' + codec if video else 'images in the parquet'})"
    )
    return Path(output_dir)
