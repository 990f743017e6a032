"""Policy server: the real openpi client against scripts/serve_policy.py in a subprocess.

References: the in-process `Policy` with the same seed (actions), openpi_client's own msgpack_numpy
(wire format), hand-made malformed messages (errors). Two servers run for the module: a plain one
with a 2 MiB message limit and one that requires an API key.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from openpi_client import msgpack_numpy as client_msgpack
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from pg_vla.policy import Observation, Policy
from pg_vla.serving import codec
from pg_vla.serving.batching import BatchingRunner
from pg_vla.serving.launch import ServerProcess
from pg_vla.serving.observations import DEFAULT_KEYS, InferenceRequest, ObservationKeys, RequestDecoder, RequestError

REPO = Path(__file__).resolve().parents[1]
PROMPT = "put the carrot on the plate"
API_KEY = "s3cret-key"
ACTION_ATOL = 1e-5  # batched vs single inference and float32 de-normalization
RSS_GROWTH_LIMIT_MIB = 50.0

# openpi_client 0.1.2 opens its connection without a context manager, which websockets >= 14 flags
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")


# ---- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy(tiny_policy_checkpoint: Path) -> Iterator[Policy]:
    """The in-process reference, on one thread: the test process, the servers and the clients share few cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield Policy.from_checkpoint(tiny_policy_checkpoint)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def servers(
    tiny_policy_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    """Both servers start at once (each takes seconds to import torch and load the model)."""
    logs = tmp_path_factory.mktemp("server_logs")
    common = ["--checkpoint_path", str(tiny_policy_checkpoint), "--num_threads", "1"]
    started = {
        "plain": ServerProcess([*common, "--max_message_mb", "2"], logs / "plain.log"),
        "keyed": ServerProcess([*common, "--api_key", API_KEY], logs / "keyed.log"),
    }
    try:
        for server in started.values():
            server.start()
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


def _nan_checkpoint(checkpoint: Path, folder: Path) -> Path:
    """A copy of the tiny policy whose action decoder has one NaN bias."""
    from conftest import edited_copy

    def poison(state: dict) -> None:
        state["action_decoder.bias"][3] = float("nan")

    return edited_copy(checkpoint, folder, poison)


@pytest.fixture(scope="module")
def plain(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["plain"]


def _request(rng: np.random.Generator, size: tuple[int, int] = (48, 64), seed: int | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {
        "observation/image": rng.integers(0, 256, (*size, 3), dtype=np.uint8),
        "observation/state": rng.normal(0, 0.1, 7),
        "prompt": PROMPT,
    }
    if seed is not None:
        request["seed"] = seed
    return request


def _observation(request: dict[str, Any]) -> Observation:
    return Observation(
        images={"primary": request["observation/image"]}, state=request["observation/state"], prompt=request["prompt"]
    )


@contextmanager
def _raw_connection(server: ServerProcess) -> Iterator[ClientConnection]:
    """A plain websockets client (it can send what the real client never would); metadata already read."""
    with connect(f"ws://{server.host}:{server.port}", compression=None, max_size=None) as ws:
        assert isinstance(ws.recv(timeout=30), bytes)
        yield ws


# ---- wire format ---------------------------------------------------------------------------------------
def _wire_values() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "u8": rng.integers(0, 256, (5, 4, 3), dtype=np.uint8),
        "f32": rng.normal(size=(4, 7)).astype(np.float32),
        "f64_be": rng.normal(size=3).astype(">f8"),
        "i64": np.arange(-3, 3, dtype=np.int64),
        "bool": np.array([True, False]),
        "empty": np.zeros((0, 3), np.float32),
        "zero_dim": np.array(2.5, np.float16),
        "transposed": np.arange(12, dtype=np.int32).reshape(3, 4).T,  # not C-contiguous
        "scalars": [np.int32(-5), np.float32(1.5), np.bool_(True), np.uint8(200)],
        "nested": {"text": "hello", "n": 3, "x": 0.25, "none": None},
    }


def _assert_same(a: Any, b: Any) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


def test_codec_matches_openpi_client_wire_format() -> None:
    values = _wire_values()
    ours, theirs = codec.packb(values), client_msgpack.packb(values)
    assert ours == theirs  # byte for byte
    _assert_same(codec.unpackb(theirs), values)
    _assert_same(client_msgpack.unpackb(ours), values)
    decoded = codec.unpackb(theirs)["f32"]
    decoded[0, 0] = 7.0  # decoded arrays are writable copies
    with pytest.raises(ValueError, match="Unsupported dtype"):
        client_msgpack.packb(np.zeros(2, np.complex64))
    with pytest.raises(codec.MessageError, match="unsupported dtype"):
        codec.packb(np.zeros(2, np.complex64))


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\xc1", "not a valid msgpack"),
        (client_msgpack.packb({"a": np.zeros(3)})[:-5], "not a valid msgpack"),
        (msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 5, b"dtype": "<f4", b"shape": [2]}), "needs 8 bytes"),
        (msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}), "unsupported dtype"),
        (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "nonsense", b"shape": [0]}), "unknown dtype"),
        (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}), "non-negative"),
        (msgpack.packb({b"__ndarray__": True, b"dtype": "<f4", b"shape": [1]}), "lacks its 'data'"),
    ],
)
def test_codec_rejects_malformed_messages(payload: bytes, message: str) -> None:
    with pytest.raises(codec.MessageError, match=message):
        codec.unpackb(payload)


# ---- observation keys and validation (no server) ---------------------------------------------------------
def test_default_key_file_matches_built_in_defaults_and_droid_keys_concatenate() -> None:
    assert ObservationKeys.load(REPO / "config" / "serve" / "default.yaml") == ObservationKeys.load(None)
    droid = ObservationKeys.load(REPO / "config" / "serve" / "droid.yaml")
    decoder = RequestDecoder(droid, droid.image_keys_for(["primary", "wrist"]), state_dim=8, cond_steps=1)
    image = np.zeros((8, 8, 3), np.uint8)
    request = decoder.decode(
        {
            "observation/exterior_image_1_left": image,
            "observation/wrist_image_left": image,
            "observation/joint_position": np.arange(7.0),
            "observation/gripper_position": [0.5],
            "prompt": "x",
        }
    )
    np.testing.assert_array_equal(request.observation.state, [0, 1, 2, 3, 4, 5, 6, 0.5])
    assert request.seed is None
    with pytest.raises(RequestError, match=r"'observation/joint_position\+observation/gripper_position' has 9"):
        decoder.decode(
            {
                "observation/exterior_image_1_left": image,
                "observation/wrist_image_left": image,
                "observation/joint_position": np.arange(8.0),
                "observation/gripper_position": 0.5,
                "prompt": "x",
            }
        )


def test_bad_key_mappings_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown entries"):
        ObservationKeys.from_mapping({**DEFAULT_KEYS, "extra": 1})
    with pytest.raises(ValueError, match="used for more than one field"):
        ObservationKeys.from_mapping({**DEFAULT_KEYS, "prompt": "observation/state"})
    with pytest.raises(ValueError, match="reads camera role 'secondary', which the observation keys map from no"):
        ObservationKeys.from_mapping({**DEFAULT_KEYS, "images": {"img": "primary"}}).image_keys_for(
            ["primary", "secondary"]
        )
    (tmp_path / "bad.yaml").write_text("images: [a, b]\nstate: s\nprompt: p\n")
    with pytest.raises(ValueError, match="'images' must map request keys to camera roles"):
        ObservationKeys.load(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ObservationKeys.load(tmp_path / "missing.yaml")


SEED_ERROR = "'seed' must be an integer in [0, 2**63) or absent, got "


def _history_decoder() -> RequestDecoder:
    """The default keys for one camera, 7 state values and a 2-step state history."""
    return RequestDecoder(ObservationKeys.load(None), {"primary": "observation/image"}, state_dim=7, cond_steps=2)


@pytest.mark.parametrize(
    "seed, expected",
    [
        (None, None),
        (0, 0),
        (2**63 - 1, 2**63 - 1),
        (np.int64(3), 3),
        (np.int32(4), 4),
        (np.uint64(2**63 - 1), 2**63 - 1),
        (np.zeros((), np.int64), 0),
        (np.array(5, np.int64), 5),
        (np.array(6, np.uint8), 6),
    ],
)
@pytest.mark.parametrize("state", [np.zeros(7, np.float32), np.zeros((2, 7), np.float32), [[0.0] * 7] * 2])
def test_values_of_the_advertised_spec_are_accepted(seed: Any, expected: int | None, state: Any) -> None:
    request = {"observation/image": np.zeros((32, 32, 3), np.uint8), "observation/state": state, "prompt": PROMPT}
    if seed is not None:
        request["seed"] = seed
    decoded = _history_decoder().decode(request)
    assert decoded.seed == expected and (expected is None or type(decoded.seed) is int)
    assert decoded.observation.state.shape == np.shape(state)


@pytest.mark.parametrize(
    "seed, described",
    [
        (True, "bool"),
        (np.bool_(False), "bool"),
        (np.array(True), "bool array of shape () holding True"),
        (3.0, "float 3.0"),
        (np.float64(3.0), "float64 3.0"),
        (np.array(3.0), "float64 array of shape () holding 3.0"),
        (-1, "int -1"),
        (np.int64(-1), "int64 -1"),
        (np.array(-1, np.int64), "int64 array of shape () holding -1"),
        (2**63, "int 9223372036854775808"),
        (np.uint64(2**63), "uint64 9223372036854775808"),
        (np.array(2**63, np.uint64), "uint64 array of shape () holding 9223372036854775808"),
        (np.array([3]), "int64 array of shape (1,)"),
        (np.zeros((1, 1), np.int64), "int64 array of shape (1, 1)"),
        ("7", "str"),
        (b"7", "bytes"),
    ],
)
def test_seeds_outside_the_spec_are_refused_with_the_key_named(seed: Any, described: str) -> None:
    request = {
        "observation/image": np.zeros((32, 32, 3), np.uint8),
        "observation/state": np.zeros(7),
        "prompt": PROMPT,
        "seed": seed,
    }
    with pytest.raises(RequestError) as refused:
        _history_decoder().decode(request)
    assert str(refused.value) == SEED_ERROR + described


@pytest.mark.parametrize(
    "value, expected",
    [(None, False), (True, True), (False, False), (np.bool_(True), True), (np.array(True), True)],
)
def test_episode_start_flags_are_read(value: Any, expected: bool) -> None:
    request = {"observation/image": np.zeros((8, 8, 3), np.uint8), "observation/state": np.zeros(7), "prompt": PROMPT}
    if value is not None:
        request["episode_start"] = value
    assert _history_decoder().decode(request).episode_start is expected


@pytest.mark.parametrize(
    "value, described", [(1, "int 1"), ("true", "str"), (np.array([True]), "bool array of shape (1,)")]
)
def test_episode_start_flags_outside_the_spec_are_refused(value: Any, described: str) -> None:
    request = {"observation/image": np.zeros((8, 8, 3), np.uint8), "observation/state": np.zeros(7), "prompt": PROMPT}
    with pytest.raises(RequestError) as refused:
        _history_decoder().decode({**request, "episode_start": value})
    assert str(refused.value) == (
        f"'episode_start' must be a boolean (true at the first step of an episode) or absent, got {described}"
    )


def test_batches_match_single_inference_and_isolate_bad_requests(policy: Policy) -> None:
    """The batch path the server uses, driven directly: same actions as Policy.infer, errors stay per request."""
    rng = np.random.default_rng(3)
    requests = [_request(rng, size=size, seed=seed) for size, seed in (((48, 64), 1), ((32, 32), 2), ((90, 50), 3))]
    runner = BatchingRunner(policy, max_batch_size=8)
    items = [InferenceRequest(_observation(r), r["seed"]) for r in requests]
    results = runner.run_batch(items, [0.0] * 3)
    for request, result in zip(requests, results):
        assert not isinstance(result, BaseException) and result.batch_size == 3
        expected = policy.infer(_observation(request), seed=request["seed"])["actions"]
        np.testing.assert_allclose(result.actions, expected, atol=ACTION_ATOL)

    bad = InferenceRequest(Observation(images=items[0].observation.images, state=np.zeros(5), prompt=PROMPT), 4)
    mixed = runner.run_batch([items[0], bad, items[2]], [0.0] * 3)
    assert isinstance(mixed[1], ValueError) and "state has 5 values" in str(mixed[1])
    for index in (0, 2):
        assert not isinstance(mixed[index], BaseException) and mixed[index].batch_size == 1
        np.testing.assert_allclose(mixed[index].actions, results[index].actions, atol=ACTION_ATOL)


def test_inference_runs_off_the_event_loop_and_waiting_requests_share_a_batch() -> None:
    class SlowPolicy:  # stands in for Policy: 0.5 s per batch
        def noise(self, batch: int, seed: int | None) -> torch.Tensor:
            return torch.zeros(batch, 4, 7)

        def infer_batch(self, observations: list[Observation], noise: torch.Tensor) -> dict[str, np.ndarray]:
            time.sleep(0.5)
            return {"actions": np.stack([np.full((4, 7), float(o.prompt)) for o in observations])}

    async def scenario() -> tuple[int, list[Any]]:
        runner = BatchingRunner(SlowPolicy(), max_batch_size=8)  # type: ignore[arg-type]
        runner.start()
        ticks = 0

        async def ticker() -> None:  # what websockets' keepalive needs: a loop that keeps running
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        image = {"primary": np.zeros((8, 8, 3), np.uint8)}
        requests = [InferenceRequest(Observation(images=image, state=np.zeros(7), prompt=str(i))) for i in range(3)]
        results = await asyncio.gather(*(runner.infer(r) for r in requests))
        task.cancel()
        await runner.close()
        return ticks, results

    ticks, results = asyncio.run(scenario())
    assert ticks >= 15, f"the event loop ran only {ticks} times during 0.5 s of inference"
    assert [r.batch_size for r in results] == [3, 3, 3]  # queued together -> one batch
    for i, result in enumerate(results):  # each request gets its own row back
        np.testing.assert_array_equal(result.actions, np.full((4, 7), float(i)))


# ---- the real client against the server ----------------------------------------------------------------------
def test_openpi_client_gets_metadata_and_the_in_process_actions(plain: ServerProcess, policy: Policy) -> None:
    client = WebsocketClientPolicy(plain.host, plain.port)
    meta = client.get_server_metadata()
    assert meta["action_horizon"] == policy.horizon == 4 and meta["action_dim"] == policy.action_dim == 7
    assert meta["camera_roles"] == ["primary"] and meta["dataset_name"] == "bridge_dataset"
    spec = meta["observation_spec"]
    assert spec["observation/image"] == {
        "shape": [32, 32, 3],
        "dtype": "uint8",
        "kind": "image",
        "note": "any H x W is resized",
        "camera": "primary",
    }
    assert spec["observation/state"]["shape"] == [7] and spec["observation/state"]["kind"] == "state"
    assert spec["prompt"]["kind"] == "prompt" and spec["seed"]["optional"] is True
    assert meta["max_message_bytes"] == 2 * 1024 * 1024

    rng = np.random.default_rng(0)
    for size, seed in (((48, 64), 7), ((224, 224), 123456789)):
        request = _request(rng, size=size, seed=seed)
        reply = client.infer(request)
        expected = policy.infer(_observation(request), seed=seed)["actions"]
        assert reply["actions"].shape == (4, 7) and reply["actions"].dtype == np.float32
        np.testing.assert_allclose(reply["actions"], expected, atol=ACTION_ATOL)
        assert reply["policy_timing"]["infer_ms"] > 0
        assert reply["server_timing"]["infer_ms"] >= reply["policy_timing"]["infer_ms"]

    # a (cond_steps, P) state given as a plain list, and a numpy-integer seed
    request = _request(rng, seed=5)
    request["observation/state"] = request["observation/state"][None].tolist()
    request["seed"] = np.int64(5)
    np.testing.assert_allclose(
        client.infer(request)["actions"], policy.infer(_observation(request), seed=5)["actions"], atol=ACTION_ATOL
    )
    # without a seed every request draws fresh noise
    unseeded = _request(rng)
    assert not np.allclose(client.infer(unseeded)["actions"], client.infer(unseeded)["actions"])


def _value_for(entry: dict[str, Any], shape: str = "shape") -> Any:
    """A value for one advertised field from its spec entry alone: the prompt's text, zeros of the shape and dtype."""
    if entry["kind"] == "prompt":
        assert entry["dtype"] == "str"
        return PROMPT
    return np.zeros(entry[shape], dtype=np.dtype(entry["dtype"]))


def test_a_request_built_from_the_advertised_spec_alone_is_answered(plain: ServerProcess, policy: Policy) -> None:
    client = WebsocketClientPolicy(plain.host, plain.port)
    meta = client.get_server_metadata()
    spec = meta["observation_spec"]
    request = {key: _value_for(entry) for key, entry in spec.items()}  # every key, the optional seed too
    assert sorted(request) == ["episode_start", "observation/image", "observation/state", "prompt", "seed"]
    assert request["seed"].shape == () and request["seed"].dtype == np.int64  # sent as a 0-d array
    assert request["episode_start"].shape == () and request["episode_start"].dtype == np.bool_
    action_shape = (meta["action_horizon"], meta["action_dim"])
    assert action_shape == (4, 7)  # the tiny checkpoint's horizon and bridge's action size

    blank = Observation(images={"primary": np.zeros((32, 32, 3), np.uint8)}, state=np.zeros(7), prompt=PROMPT)
    expected = {seed: policy.infer(blank, seed=seed)["actions"] for seed in (0, 3)}
    reply = client.infer(request)
    assert reply["actions"].shape == action_shape and reply["actions"].dtype == np.float32
    np.testing.assert_allclose(reply["actions"], expected[0], atol=ACTION_ATOL)

    # the state's history form, then the seed as a numpy scalar, a Python int and a nonzero 0-d array
    state_spec = spec["observation/state"]
    assert state_spec["history_shape"] == [1, 7]  # cond_steps 1, 7 state values
    variants = [
        ({"observation/state": _value_for(state_spec, "history_shape")}, 0),
        ({"seed": np.int64(0)}, 0),
        ({"seed": 0}, 0),
        ({"seed": np.array(3, np.int64)}, 3),
    ]
    for change, seed in variants:
        actions = client.infer({**request, **change})["actions"]
        assert actions.shape == action_shape
        np.testing.assert_allclose(actions, expected[seed], atol=ACTION_ATOL)
    assert not np.allclose(expected[0], expected[3])  # the seed did reach the noise


def test_messages_above_one_mib_pass_and_oversized_ones_are_refused(plain: ServerProcess) -> None:
    rng = np.random.default_rng(1)
    client = WebsocketClientPolicy(plain.host, plain.port)
    large = _request(rng, size=(720, 720), seed=0)  # 1.5 MiB > websockets' 1 MiB default, < the 2 MiB limit
    assert client.infer(large)["actions"].shape == (4, 7)

    with _raw_connection(plain) as ws:
        ws.send(codec.packb(_request(rng, size=(1100, 1100), seed=0)))  # 3.5 MiB
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # "message too big"
    assert "exceeds limit" in closed.value.rcvd.reason
    assert client.infer(large)["actions"].shape == (4, 7)  # other connections are unaffected
    assert plain.alive()


def _malformed_requests() -> list[tuple[str | bytes, str]]:
    rng = np.random.default_rng(2)
    valid = _request(rng)

    def edit(**changes: Any) -> bytes:
        request = {**valid, **{key.replace("__", "/"): value for key, value in changes.items()}}
        return codec.packb({k: v for k, v in request.items() if v is not None})

    return [
        (b"\x93\x01", "not a valid msgpack"),  # truncated array
        (b"\xc1", "not a valid msgpack"),
        ("a text frame", "must be binary msgpack"),
        (codec.packb([1, 2, 3]), "must be a map of observation fields, got list"),
        (edit(prompt=None), "request lacks key(s) ['prompt']"),
        (edit(observation__image=None), "request lacks key(s) ['observation/image']"),
        (
            edit(observation__image=valid["observation/image"].astype(np.float32)),
            "'observation/image' (camera 'primary') must be a uint8 array of shape (H, W, 3), got float32",
        ),
        (edit(observation__image=valid["observation/image"][..., 0]), "got uint8 array of shape (48, 64)"),
        (edit(observation__image=np.zeros((3, 32, 32), np.uint8)), "channel-first images must be transposed"),
        (edit(observation__image=[[1, 2, 3]]), "got list"),
        (edit(observation__state=np.zeros(5)), "'observation/state' has 5 values, the policy expects 7"),
        (edit(observation__state=np.zeros((2, 7))), "must have shape (7,) or (1, 7), got (2, 7)"),
        (edit(observation__state=["a"] * 7), "'observation/state' must be an array or list of numbers"),
        (edit(observation__state=[[1.0, 2.0], [3.0]]), "'observation/state' is not a rectangular array"),
        (edit(observation__state=np.full(7, np.nan)), "contains NaN"),
        (edit(prompt=5), "'prompt' must be a string (the instruction), got int 5"),
        (edit(prompt=b"bytes"), "'prompt' must be a string (the instruction), got bytes"),
        (edit(seed=-1), SEED_ERROR + "int -1"),
        (edit(seed="7"), SEED_ERROR + "str"),
        (edit(seed=True), SEED_ERROR + "bool"),
        (edit(seed=np.array(2**63, np.uint64)), SEED_ERROR + "uint64 array of shape () holding 9223372036854775808"),
        (edit(seed=np.array(3.0)), SEED_ERROR + "float64 array of shape () holding 3.0"),
        (edit(seed=np.array([3])), SEED_ERROR + "int64 array of shape (1,)"),
        (
            msgpack.packb(
                {
                    **{k: v for k, v in valid.items() if k != "observation/state"},
                    "observation/state": {b"__ndarray__": True, b"data": b"\0" * 7, b"dtype": "<f8", b"shape": [7]},
                },
                default=client_msgpack.pack_array,
            ),
            "array of shape [7] and dtype <f8 needs 56 bytes, the message holds 7",
        ),
    ]


def test_malformed_requests_get_errors_and_the_connection_keeps_serving(plain: ServerProcess, policy: Policy) -> None:
    rng = np.random.default_rng(3)
    valid = _request(rng, seed=11)
    expected = policy.infer(_observation(valid), seed=11)["actions"]
    bystander = WebsocketClientPolicy(plain.host, plain.port)  # opened before, used after
    with _raw_connection(plain) as ws:
        for payload, message in _malformed_requests():
            ws.send(payload)
            reply = ws.recv(timeout=60)
            assert isinstance(reply, str), f"no error for {message!r}"
            assert message in reply
            ws.send(client_msgpack.packb(valid))  # the same connection still answers a valid request
            answer = ws.recv(timeout=60)
            assert isinstance(answer, bytes)
            np.testing.assert_allclose(client_msgpack.unpackb(answer)["actions"], expected, atol=ACTION_ATOL)
    with pytest.raises(RuntimeError, match="request lacks key"):  # the real client raises with the text
        bystander.infer({"prompt": PROMPT})
    np.testing.assert_allclose(bystander.infer(valid)["actions"], expected, atol=ACTION_ATOL)


def test_client_leaving_mid_request_does_not_disturb_others(plain: ServerProcess, policy: Policy) -> None:
    rng = np.random.default_rng(4)
    request = _request(rng, seed=21)
    expected = policy.infer(_observation(request), seed=21)["actions"]
    other = WebsocketClientPolicy(plain.host, plain.port)
    for _ in range(3):
        with _raw_connection(plain) as ws:
            ws.send(client_msgpack.packb(request))
            ws.socket.close()  # gone without a closing handshake, before the reply
        np.testing.assert_allclose(other.infer(request)["actions"], expected, atol=ACTION_ATOL)
    with _raw_connection(plain) as ws:
        ws.send(client_msgpack.packb(request))  # leaving the block closes cleanly before the reply
    np.testing.assert_allclose(other.infer(request)["actions"], expected, atol=ACTION_ATOL)
    assert plain.alive()


def test_sequential_and_concurrent_clients_with_bounded_memory(plain: ServerProcess, policy: Policy) -> None:
    rng = np.random.default_rng(5)
    client = WebsocketClientPolicy(plain.host, plain.port)
    requests = [_request(rng, size=(96, 128), seed=i) for i in range(4)]
    for request in requests * 2:  # warm-up: allocator pools, tokenizer caches
        client.infer(request)
    rss_before = plain.rss_mib()
    replies = [client.infer(requests[i % len(requests)]) for i in range(200)]
    growth = plain.rss_mib() - rss_before
    assert growth < RSS_GROWTH_LIMIT_MIB, f"server RSS grew by {growth:.1f} MiB over 200 requests"
    expected = [policy.infer(_observation(r), seed=r["seed"])["actions"] for r in requests]
    for i, reply in enumerate(replies):
        np.testing.assert_allclose(reply["actions"], expected[i % len(requests)], atol=ACTION_ATOL)

    # 4 clients at once, each its own connection and observations; answers must not be mixed up
    per_client, results, errors = 5, {}, []
    own = {c: [_request(rng, seed=1000 * c + i) for i in range(per_client)] for c in range(4)}

    def worker(c: int) -> None:
        try:
            mine = WebsocketClientPolicy(plain.host, plain.port)
            results[c] = [mine.infer(r) for r in own[c]]
        except Exception as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and len(results) == 4
    batch_sizes = []
    for c in range(4):
        assert len(results[c]) == per_client
        for request, reply in zip(own[c], results[c]):
            np.testing.assert_allclose(
                reply["actions"], policy.infer(_observation(request), seed=request["seed"])["actions"], atol=ACTION_ATOL
            )
            batch_sizes.append(reply["server_timing"]["batch_size"])
    assert 1 <= max(batch_sizes) <= 4
    growth = plain.rss_mib() - rss_before
    assert growth < RSS_GROWTH_LIMIT_MIB, f"server RSS grew by {growth:.1f} MiB with concurrent clients"


# ---- API key -----------------------------------------------------------------------------------------------
def test_api_key_is_required_when_set(servers: dict[str, ServerProcess]) -> None:
    keyed = servers["keyed"]
    for key in (None, "wrong-key"):
        with pytest.raises(InvalidStatus) as refused:
            WebsocketClientPolicy(keyed.host, keyed.port, api_key=key)
        assert refused.value.response.status_code == 401
        assert b"Api-Key" in refused.value.response.body
    client = WebsocketClientPolicy(keyed.host, keyed.port, api_key=API_KEY)
    assert client.get_server_metadata()["action_dim"] == 7
    assert client.infer(_request(np.random.default_rng(6), seed=1))["actions"].shape == (4, 7)
    # the plain server needs no key and ignores one
    plain = servers["plain"]
    assert WebsocketClientPolicy(plain.host, plain.port, api_key="anything").get_server_metadata()["action_dim"] == 7


def test_non_finite_actions_are_never_sent(tiny_policy_checkpoint: Path, tmp_path: Path) -> None:
    """A policy whose weights hold a NaN: serve_policy.py refuses to start (its warm-up sees NaN actions); served
    anyway (a server built in-process, on loopback), every request gets an error reply naming the problem,
    never NaN actions, and the connection keeps serving."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from pg_vla.serving.observations import ObservationKeys
    from pg_vla.serving.server import PolicyServer, ServerConfig

    nan = _nan_checkpoint(tiny_policy_checkpoint, tmp_path / "nan_policy" / "step_000001")
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "serve_policy.py"),
            "--checkpoint_path",
            str(nan),
            "--port",
            "0",
            "--num_threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "non-finite action values" in done.stderr and "not serving it" in done.stderr
    assert "listening" not in done.stdout

    server = PolicyServer(Policy.from_checkpoint(nan), ObservationKeys.load(None), ServerConfig(port=0))
    loop, address = asyncio.new_event_loop(), {}
    stop = asyncio.Event()
    ready = threading.Event()

    def on_ready(host: str, port: int) -> None:
        address.update(host=host, port=port)
        ready.set()

    thread = threading.Thread(target=lambda: loop.run_until_complete(server.serve(stop, on_ready)), daemon=True)
    thread.start()
    try:
        assert ready.wait(60)
        client = WebsocketClientPolicy(address["host"], address["port"])
        rng = np.random.default_rng(11)
        for _ in range(2):
            with pytest.raises(
                RuntimeError,
                match="inference failed: NonFiniteActionsError: the model produced 28 non-finite action values of 28",
            ):
                client.infer(_request(rng, seed=0))
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
