"""Meta-World's second camera view: rendered next to the first, written by the demonstrations as the
"secondary" camera, read back through the RLDS pipeline, handed to the policy; and the view-ambiguity
figures (pinhole projection and best placement, checked by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metaworld_subprocess import REPO, load_script, run_python, run_script

AMBIGUITY_SCRIPT = REPO / "scripts" / "bench" / "metaworld_view_ambiguity.py"


def _ambiguity_module():
    return load_script(AMBIGUITY_SCRIPT)


def test_pinhole_projection_hand_checked():
    ambiguity = _ambiguity_module()
    # a camera at the origin with world axes, looking along -z, 90 degrees field of view on 112 px:
    # focal = 56 px, so (0.1, 0.2, -1) lands at (5.6, 11.2) px from the centre and (0.1, 0.2, -2) at half that
    project = ambiguity.pinhole(np.zeros(3), np.eye(3), 90.0, 112)
    np.testing.assert_allclose(project(np.array([[0.1, 0.2, -1.0], [0.1, 0.2, -2.0]])), [[5.6, 11.2], [2.8, 5.6]])
    with pytest.raises(ValueError, match="behind the camera"):
        project(np.array([[0.0, 0.0, 1.0]]))


def test_best_placement_hand_checked():
    ambiguity = _ambiguity_module()
    # two pixel cells (x = 0 and x = 1), each seen by points at depths z = 0 and z = h, five of each:
    # the best estimate is z = h/2, off by h/2 for every point
    x = np.repeat([0.0, 1.0], 10)
    for h, placed in ((0.2, 0.0), (0.06, 1.0)):
        z = np.tile(np.repeat([0.0, h], 5), 2)
        points = np.stack([x, np.zeros_like(x), z], axis=1)
        pixels = np.stack([x * 10, np.zeros_like(x)], axis=1)  # the view sees x, not z
        fraction, median, cells, used = ambiguity.best_placement(points, pixels, cell=1.0, tolerance=0.05)
        assert (fraction, cells, used) == (placed, 2, 1.0)
        assert median == pytest.approx(h / 2)
        # a second view that sees z places every point exactly
        both = np.concatenate([pixels, z[:, None] * 1000], axis=1)
        assert ambiguity.best_placement(points, both, cell=1.0, tolerance=0.05)[:2] == (1.0, 0.0)


def test_view_ambiguity_script_on_reach():
    """The script on reach's real goal box and cameras: corner4 alone leaves some goals unplaceable, the
    two views together place (nearly) every one, and the JSON names what it measured."""
    pytest.importorskip("metaworld")
    proc = run_script(
        [str(AMBIGUITY_SCRIPT), "--views", "corner4", "corner4,topview", "--cell", "1", "--samples", "20000"]
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["task"] == "reach-v3" and out["goal_low"] == [-0.1, 0.8, 0.05] and out["goal_high"] == [0.1, 0.9, 0.3]
    one, two = out["results"]
    assert one["views"] == "corner4" and two["views"] == "corner4,topview"
    assert 0.5 < one["placed_within_tolerance"] < 0.9 and two["placed_within_tolerance"] > 0.99


_SECOND_VIEW_PROBE = """
import json
import numpy as np
from pg_vla.eval.metaworld.adapter import MetaWorldAdapter
from pg_vla.eval.metaworld.env import MetaWorldEnv
from pg_vla.eval.metaworld.rendering import SceneCamera
one = MetaWorldEnv("reach-v3", image_size=112)
two = MetaWorldEnv("reach-v3", image_size=112, secondary_camera="topview")
top = SceneCamera(two.env.model, "topview", 112)
m = two.env.model
cam = [m.camera(i).name for i in range(m.ncam)].index("topview")
out = []
for seed in (100000, 100001, 100002):
    a, _ = one.reset(seed)
    b, instruction = two.reset(seed)
    d = two.env.data
    v = (b.state[36:39] - d.cam_xpos[cam]) @ d.cam_xmat[cam].reshape(3, 3)  # the goal in camera axes
    f = 56 / np.tan(np.deg2rad(m.cam_fovy[cam]) / 2)
    x, y = f * v[0] / -v[2] + 56, 56 - f * v[1] / -v[2]
    row, col = int(round(111 - y)), int(round(111 - x))  # the frame is rotated by 180 degrees
    reset_second_is_topview = bool(np.array_equal(b.secondary_image, top.render(d)))
    step = two.step(np.array([0.5, 0.0, 0.0, 0.0]))
    obs = MetaWorldAdapter().preprocess(None, step.obs, instruction)
    out.append({
        "primary_same": bool(np.array_equal(a.image, b.image)),
        "second_is_topview": reset_second_is_topview,
        "second_differs": float(np.abs(b.image.astype(int) - b.secondary_image.astype(int)).mean()),
        "goal_pixel": b.secondary_image[row, col].tolist(),
        "roles": sorted(obs.images),
        "step_second_is_topview": bool(np.array_equal(step.obs.secondary_image, top.render(d))),
        "single_view_roles": sorted(MetaWorldAdapter().preprocess(None, a, instruction).images),
        "no_second": one.step(np.zeros(4)).obs.secondary_image is None,
    })
top.close(); one.close(); two.close()
print(json.dumps(out))
"""


def test_second_view_is_the_topview_camera_and_the_secondary_role():
    """The second view of a step is exactly the topview camera's frame of that step; the first view is
    unchanged by it; reach's goal, projected with numpy from the camera's pose, lands on its red marker
    in it; the adapter hands it to the policy as the "secondary" camera (and nothing extra without it)."""
    pytest.importorskip("metaworld")
    for frame in run_python(_SECOND_VIEW_PROBE):
        assert frame["primary_same"] and frame["no_second"]
        assert frame["second_is_topview"] and frame["step_second_is_topview"]
        assert frame["second_differs"] > 20
        r, g, b = frame["goal_pixel"]
        assert r > g + 60 and r > b + 60, frame  # the goal marker is red
        assert frame["roles"] == ["primary", "secondary"] and frame["single_view_roles"] == ["primary"]


def _demos(out: Path, *extra: str) -> dict:
    proc = run_script(
        [
            "scripts/data/make_metaworld_demos.py",
            "--output_dir",
            str(out),
            "--tasks",
            "reach-v3",
            "--episodes_per_task",
            "1",
            "--val_episodes_per_task",
            "0",
            "--workers",
            "1",
            "--num_shards",
            "1",
            "--image_size",
            "112",
            *extra,
        ]
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


_FIRST_FRAMES = """
import json
import numpy as np
from pg_vla.eval.metaworld.env import MetaWorldEnv
env = MetaWorldEnv("reach-v3", image_size=112, secondary_camera="topview")
obs, _ = env.reset(0)
np.save("{path}", np.stack([obs.image, obs.secondary_image]))
env.close()
print(json.dumps(True))
"""


def test_demonstrations_with_a_second_view_read_back_as_two_cameras(tmp_path: Path):
    pytest.importorskip("metaworld")
    two, one = tmp_path / "two", tmp_path / "one"
    assert _demos(two, "--secondary_camera", "topview")["episodes"] == 1
    assert _demos(one)["episodes"] == 1
    run_python(_FIRST_FRAMES.format(path=tmp_path / "first.npy"))
    rendered = np.load(tmp_path / "first.npy").astype(np.float64)  # (2, 112, 112, 3): corner4, topview at seed 0

    from pg_vla.data.rlds import pipeline
    from pg_vla.data.rlds.config import RLDSConfig

    def first_batch(root: Path, roles: tuple[str, ...]) -> dict:
        cfg = RLDSConfig(
            data_path=str(root),
            mix="metaworld",
            train=False,
            image_size=112,
            cond_steps=1,
            horizon_steps=4,
            batch_size=4,
            shuffle_buffer=4,
            read_threads=1,
            transform_threads=1,
            statistics_dir=str(tmp_path / "stats"),
            camera_roles=roles,
        )
        ds, _ = pipeline.make_dataset(cfg)
        return pipeline.to_numpy_batch(next(iter(ds)))

    batch = first_batch(two, ("primary", "secondary"))
    assert batch["images"].shape == (4, 2, 112, 112, 3) and batch["image_mask"].all()
    first = batch["images"][list(batch["step"]).index(0)].astype(np.float64)  # (2, S, S, 3) of step 0
    for view in range(2):  # each camera role holds its own view (JPEG round trip)
        assert np.abs(first[view] - rendered[view]).mean() < 4
        assert np.abs(first[view] - rendered[1 - view]).mean() > 20
    # the same data trained with one camera; a one-camera dataset asked for two names the missing feature
    assert first_batch(two, ("primary",))["images"].shape == (4, 1, 112, 112, 3)
    assert first_batch(one, ("primary",))["images"].shape == (4, 1, 112, 112, 3)
    with pytest.raises(KeyError, match="image key 'image_secondary' \\(camera secondary\\)"):
        first_batch(one, ("primary", "secondary"))


def test_a_second_view_training_would_not_read_is_refused():
    from pg_vla.eval.metaworld.training import run

    cfg = {"metaworld": {"secondary_camera": "topview"}, "data": {"camera_roles": ["primary"]}}
    with pytest.raises(ValueError, match=r"secondary_camera=topview .*data.camera_roles=\[primary,secondary\]"):
        run(cfg)
