"""Observation history (cond_steps > 1) at inference: the policy's rolling per-episode images and states
against model inputs built by hand, the evaluation controller's history and temporal ensembling
against a numpy ensemble of independently predicted chunks, and a policy-server session that keeps its
history across requests and forgets it at an episode start and on a new connection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import make_policy_checkpoint
from pg_vla.eval.adapters.base import EnvAdapter
from pg_vla.eval.controllers import CheckpointController, Request
from pg_vla.policy import Observation, ObservationHistory, Policy

PROMPT = "put the carrot on the plate"
ROLES = ("primary", "wrist")
COND = 2
ATOL = 1e-5
# openpi_client 0.1.2 opens its connection without a context manager, which websockets >= 14 flags
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
STATISTICS = Path(__file__).resolve().parents[1] / "config" / "bridge_statistics.json"  # the checkpoint's


@pytest.fixture(scope="module")
def history_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint_dir: Path) -> Path:
    """A tiny pi0 reading 2 cameras x 2 history steps (4 views) and a 2-step state history."""
    folder = tmp_path_factory.mktemp("history_policy") / "checkpoints"
    return make_policy_checkpoint(folder, tiny_checkpoint_dir, camera_roles=ROLES, cond_steps=COND, num_cameras=2)


@pytest.fixture(scope="module")
def policy(history_checkpoint: Path) -> Policy:
    return Policy.from_checkpoint(history_checkpoint)


def _frames(rng: np.random.Generator, n: int) -> list[Observation]:
    return [
        Observation(
            images={
                "primary": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
                "wrist": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            },
            state=rng.normal(0, 0.1, 7),
            prompt=PROMPT,
        )
        for _ in range(n)
    ]


def _by_hand(policy: Policy, steps: list[Observation], real: int, seed: int) -> np.ndarray:
    """Normalized chunk (H, A) of the model on inputs built here: views frame-major (step, camera), the
    `COND - real` oldest steps masked, states bounds-normalized in float64 from the statistics JSON."""
    views = [policy.processor.preprocess_images(o.images[role][None, None])[0, 0] for o in steps for role in ROLES]
    image_mask = torch.tensor([[step >= COND - real for step in range(COND) for _ in ROLES]])
    stats = json.loads((STATISTICS).read_text())
    p01, p99 = np.array(stats["proprio"]["p01"]), np.array(stats["proprio"]["p99"])
    states = np.stack([np.clip(2 * (o.state - p01) / (p99 - p01) - 1, -1, 1) for o in steps])  # (C, 7)
    text = policy.processor.tokenize([PROMPT])
    noise = torch.randn((1, 4, 7), generator=torch.Generator().manual_seed(seed))
    out = policy.model.sample_actions(
        torch.stack(views)[None],
        text["input_ids"],
        text["attention_mask"],
        torch.tensor(states, dtype=torch.float32)[None],
        noise=noise,
        image_mask=image_mask,
    )
    return out[0].double().numpy()


def test_rolling_history_gives_the_model_frame_major_views_masked_before_the_episode_start(policy: Policy) -> None:
    obs = _frames(np.random.default_rng(0), 3)
    history = ObservationHistory(COND)
    expected_steps = [([obs[0], obs[0]], 1), ([obs[0], obs[1]], 2), ([obs[1], obs[2]], 2)]
    for o, (steps, real) in zip(obs, expected_steps):
        given = history.push(o)
        assert given.history_steps == real and given.images["primary"].shape == (COND, 48, 64, 3)
        got = policy.infer(given, seed=3)["normalized_actions"]
        np.testing.assert_allclose(got, _by_hand(policy, steps, real, seed=3), atol=ATOL)
    # a new episode: the history starts again from its first frame
    history.reset()
    restarted = policy.infer(history.push(obs[2]), seed=3)["normalized_actions"]
    np.testing.assert_allclose(restarted, _by_hand(policy, [obs[2], obs[2]], 1, seed=3), atol=ATOL)
    # a lone frame is an episode start; the mask matters: the same frames all valid give other actions
    np.testing.assert_allclose(policy.infer(obs[2], seed=3)["normalized_actions"], restarted, atol=ATOL)
    assert not np.allclose(_by_hand(policy, [obs[2], obs[2]], 2, seed=3), restarted, atol=1e-3)
    # a full history given by the caller, every step real
    explicit = Observation(
        images={r: np.stack([obs[0].images[r], obs[1].images[r]]) for r in ROLES},
        state=np.stack([obs[0].state, obs[1].state]),
        prompt=PROMPT,
    )
    np.testing.assert_allclose(
        policy.infer(explicit, seed=4)["normalized_actions"], _by_hand(policy, obs[:2], 2, seed=4), atol=ATOL
    )


def test_bad_histories_are_named(policy: Policy) -> None:
    obs = _frames(np.random.default_rng(1), 2)
    three = {r: np.stack([obs[0].images[r]] * 3) for r in ROLES}
    with pytest.raises(ValueError, match="history of 3 frames, the model reads 2"):
        policy.infer(Observation(three, obs[0].state, PROMPT))
    mixed = {"primary": three["primary"][:2], "wrist": obs[0].images["wrist"]}
    with pytest.raises(ValueError, match="every camera a single frame"):
        policy.infer(Observation(mixed, obs[0].state, PROMPT))
    for bad in (0, 3):
        with pytest.raises(ValueError, match=r"history_steps must be in 1\.\.2"):
            policy.infer(Observation(obs[0].images, obs[0].state, PROMPT, history_steps=bad))
    history = ObservationHistory(COND)
    history.push(obs[0])
    with pytest.raises(ValueError, match="push one frame"):
        history.push(Observation({r: three[r][:2] for r in ROLES}, obs[0].state, PROMPT))
    resized = dict(obs[1].images, wrist=np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="'wrist' changed size within an episode"):
        history.push(Observation(resized, obs[1].state, PROMPT))
    with pytest.raises(ValueError, match="cameras changed within an episode"):
        history.push(Observation({"primary": obs[1].images["primary"]}, obs[1].state, PROMPT))


class _ObservationAdapter(EnvAdapter):
    """The environment here hands over `Observation`s already; chunks pass through unchanged."""

    def preprocess(self, env: Any, obs: Any, instruction: str) -> Observation:
        return obs

    def postprocess(self, actions: np.ndarray) -> list[np.ndarray]:
        return list(actions)

    def get_video_frame(self, env: Any, obs: Any) -> np.ndarray:
        return next(iter(obs.images.values()))


@pytest.mark.parametrize("k", [0.5, -0.3])
def test_temporal_ensembling_executes_the_weighted_mean_of_overlapping_chunks(policy: Policy, k: float) -> None:
    obs = _frames(np.random.default_rng(2), 7)
    controller = CheckpointController(policy, [_ObservationAdapter()], act_steps=None, seed=10, temporal_ensemble_k=k)
    horizon = policy.horizon
    for episode in range(2):  # the second episode must start from an empty history and no old chunks
        controller.start_episode(0, "task", episode)
        reference = ObservationHistory(COND)
        chunks = []
        for t, o in enumerate(obs):
            (action,) = controller.act([Request(0, None, o, PROMPT)])
            chunk_seed = 10 + episode * len(obs) + t  # the controller's seed advances per call
            chunks.append(policy.infer(reference.push(o), seed=chunk_seed)["actions"].astype(np.float64))
            first = max(0, t - horizon + 1)
            predictions = np.stack([chunks[j][t - j] for j in range(first, t + 1)])  # oldest first
            weights = np.exp(-k * np.arange(len(predictions)))
            np.testing.assert_allclose(action[0], weights @ predictions / weights.sum(), atol=ATOL)
            assert len(action) == 1
    # without ensembling, the whole chunk of the (history) observation runs
    plain = CheckpointController(policy, [_ObservationAdapter()], act_steps=None, seed=10)
    plain.start_episode(0, "task", 0)
    (actions,) = plain.act([Request(0, None, obs[0], PROMPT)])
    np.testing.assert_allclose(np.stack(actions), policy.infer(obs[0], seed=10)["actions"], atol=ATOL)
    with pytest.raises(ValueError, match="act_steps must be None or 1"):
        CheckpointController(policy, [_ObservationAdapter()], act_steps=2, seed=0, temporal_ensemble_k=0.1)


def test_server_session_keeps_and_resets_its_history(history_checkpoint: Path, policy: Policy, tmp_path: Path) -> None:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from pg_vla.serving.launch import ServerProcess

    server = ServerProcess(
        ["--checkpoint_path", str(history_checkpoint), "--num_threads", "1"], tmp_path / "server.log"
    )
    obs = _frames(np.random.default_rng(3), 3)

    def request(o: Observation, seed: int, **extra: Any) -> dict[str, Any]:
        return {
            "observation/image": o.images["primary"],
            "observation/wrist_image": o.images["wrist"],
            "observation/state": o.state,
            "prompt": PROMPT,
            "seed": seed,
            **extra,
        }

    def expected(steps: list[Observation], real: int, seed: int) -> np.ndarray:
        o = Observation(
            images={r: np.stack([s.images[r] for s in steps]) for r in ROLES},
            state=np.stack([s.state for s in steps]),
            prompt=PROMPT,
            history_steps=real,
        )
        return policy.infer(o, seed=seed)["actions"]

    server.start()
    try:
        server.wait_ready()
        client = WebsocketClientPolicy(server.host, server.port)
        meta = client.get_server_metadata()
        assert meta["cond_steps"] == COND and meta["observation_spec"]["episode_start"]["dtype"] == "bool"
        replies = [client.infer(request(o, seed=5 + i))["actions"] for i, o in enumerate(obs)]
        np.testing.assert_allclose(replies[0], expected([obs[0], obs[0]], 1, 5), atol=ATOL)
        np.testing.assert_allclose(replies[1], expected([obs[0], obs[1]], 2, 6), atol=ATOL)
        np.testing.assert_allclose(replies[2], expected([obs[1], obs[2]], 2, 7), atol=ATOL)
        # episode_start: the history restarts at this request's frame
        restarted = client.infer(request(obs[2], seed=7, episode_start=True))["actions"]
        np.testing.assert_allclose(restarted, expected([obs[2], obs[2]], 1, 7), atol=ATOL)
        assert not np.allclose(restarted, replies[2], atol=1e-4)
        client.infer(request(obs[0], seed=1))  # this connection's history now holds obs[2], obs[0]
        # a new connection starts with no history, whatever the other one holds
        other = WebsocketClientPolicy(server.host, server.port)
        np.testing.assert_allclose(
            other.infer(request(obs[1], seed=8))["actions"], expected([obs[1], obs[1]], 1, 8), atol=ATOL
        )
    finally:
        server.stop()
