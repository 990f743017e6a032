"""Policy server under hostile messages: decoding limits, decoding off the event loop, per-connection budgets.

The server test runs scripts/serve_policy.py (default limits, 32 MiB messages) with the tiny policy on
loopback. A second connection sends 32 MiB of empty msgpack arrays (`0xdd` + length + `0x90` * n: one
byte on the wire, one Python list in the decoder, ~2 GB for a 32 MiB message without limits) while a
normal client keeps asking for actions; the normal client must stay within its measured latency.
"""

from __future__ import annotations

import asyncio
import statistics
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import numpy as np
import pytest
from openpi_client import msgpack_numpy as client_msgpack
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from pg_vla.serving import codec
from pg_vla.serving.launch import ServerProcess
from pg_vla.serving.observations import ObservationKeys, RequestDecoder

MIB = 1024 * 1024
PROMPT = "put the carrot on the plate"


def _empty_arrays(total_bytes: int) -> bytes:
    """One array32 of (total_bytes - 5) empty arrays: the message from the report, `total_bytes` long."""
    count = total_bytes - 5
    return b"\xdd" + struct.pack(">I", count) + b"\x90" * count


def _request(rng: np.random.Generator, seed: int) -> dict[str, Any]:
    return {
        "observation/image": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        "observation/state": rng.normal(0, 0.1, 7),
        "prompt": PROMPT,
        "seed": seed,
    }


# ---- codec limits on small crafted messages ------------------------------------------------------------
def _small_limits() -> Any:
    """What one camera and a 7-value state get with a 64 KiB message limit."""
    decoder = RequestDecoder(ObservationKeys.load(None), {"primary": "observation/image"}, state_dim=7, cond_steps=1)
    return decoder.decode_limits(max_message_bytes=64 * 1024)


def _nested_arrays(depth: int) -> bytes:
    return b"\x91" * depth + b"\x90"  # [[[...[]...]]]


@pytest.mark.parametrize(
    "payload, limit",
    [
        (b"\xdf" + struct.pack(">I", 10**6) + b"\xa1k\xc0" * 10, "max_map_len"),  # claims 10^6 entries
        (msgpack.packb({f"k{i}": i for i in range(10**4)}), "max_map_len"),  # a real 10^4-entry map
        (_empty_arrays(64 * 1024), "max_array_len"),
        (_nested_arrays(200), "max_depth"),
        (msgpack.packb([[0] * 200] * 200), "max_objects"),  # every array short, 40k objects in all
        (msgpack.packb({"observation/image": b"\0" * (64 * 1024 + 1)}), "max_bin_len"),  # more than a message holds
        (msgpack.packb({"prompt": "x" * (1024 * 1024)}), "max_str_len"),
        (msgpack.packb({"x": msgpack.ExtType(5, b"abc")}), "max_ext_len"),
        (b"\xdd" + struct.pack(">I", 2**32 - 1), "max_array_len"),  # header only: refused before reading on
    ],
    ids=[
        "map_header_1e6",
        "map_1e4",
        "empty_arrays",
        "nested_200",
        "objects_40k",
        "bin",
        "str",
        "ext",
        "array_header_4g",
    ],
)
def test_codec_refuses_messages_beyond_its_limits_by_name(payload: bytes, limit: str) -> None:
    limits = _small_limits()
    start = time.perf_counter()
    with pytest.raises(codec.LimitError, match=limit):
        codec.unpackb(payload, limits)
    assert time.perf_counter() - start < 0.5  # refused while counting, long before building 10^4.. objects
    assert issubclass(codec.LimitError, codec.MessageError)  # the server answers it as an invalid request


def test_codec_limits_pass_what_clients_send_and_keep_malformed_errors() -> None:
    limits = _small_limits()
    rng = np.random.default_rng(0)
    request = _request(rng, seed=3)
    request["observation/state"] = request["observation/state"][None].tolist()  # (cond_steps, P) as lists
    request["extra"] = {"joint_names": [f"j{i}" for i in range(7)], "nested": [[1, 2], [3, {"a": None}]]}
    decoded = codec.unpackb(client_msgpack.packb(request), limits)
    np.testing.assert_array_equal(decoded["observation/image"], request["observation/image"])
    assert decoded["observation/state"] == request["observation/state"] and decoded["extra"] == request["extra"]
    # structural errors are still reported by msgpack, not mistaken for limits
    for payload in (b"\x93\x01", b"\xc1", client_msgpack.packb({"a": np.zeros(3)})[:-5], b"\x90\x90"):
        with pytest.raises(codec.MessageError, match="not a valid msgpack") as raised:
            codec.unpackb(payload, limits)
        assert not isinstance(raised.value, codec.LimitError)
    # the limits follow the spec: a longer state history allows longer lists
    history = RequestDecoder(
        ObservationKeys.load(None), {"primary": "observation/image"}, state_dim=32, cond_steps=64
    ).decode_limits(max_message_bytes=32 * MIB)
    assert history.max_array_len >= 64 * 32 and history.max_bin_len == 32 * MIB
    with pytest.raises(ValueError, match="max_depth"):
        codec.DecodeLimits(max_depth=0)


# ---- server configuration and the per-connection budget (no server) ------------------------------------
def test_server_config_validates_the_new_limits() -> None:
    from pg_vla.serving.server import ServerConfig

    for field, value in (
        ("decode_threads", 0),
        ("connection_bytes_per_s", 0.0),
        ("connection_messages_per_s", -1.0),
        ("max_limit_violations", 0),
    ):
        with pytest.raises(ValueError, match=field):
            ServerConfig(**{field: value})


def test_connection_budget_delays_a_client_beyond_its_rate() -> None:
    from pg_vla.serving.server import ConnectionBudget

    now = [0.0]
    budget = ConnectionBudget(bytes_per_s=100.0, messages_per_s=10.0, burst_bytes=200.0, clock=lambda: now[0])
    assert budget.charge(150) == 0.0  # within the burst
    assert budget.charge(100) == pytest.approx(0.5)  # 50 bytes short at 100 B/s
    now[0] += 0.5
    assert budget.charge(0) == 0.0  # the debt was paid by waiting
    now[0] += 10.0
    waits = [budget.charge(1) for _ in range(12)]  # the message bucket: 10 at once, then 0.1 s each
    assert waits[:10] == [0.0] * 10 and waits[10] == pytest.approx(0.1) and waits[11] == pytest.approx(0.2)


def test_decoding_runs_off_the_event_loop() -> None:
    """A request that takes 0.5 s to decode leaves the event loop free (pings, other connections)."""
    from pg_vla.serving.server import PolicyServer

    policy = SimpleNamespace(  # what PolicyServer reads from a Policy before inference
        camera_roles=["primary"],
        state_dim=7,
        config=SimpleNamespace(cond_steps=1),
        dataset_name="d",
        name="stub",
        horizon=4,
        action_dim=7,
        observation_spec=lambda: {
            "primary": {"shape": [32, 32, 3]},
            "state": {"shape": [7]},
            "prompt": {"kind": "prompt"},
        },
    )
    server = PolicyServer(policy, ObservationKeys.load(None))  # type: ignore[arg-type]
    slow_calls = []

    class SlowDecoder:
        def decode(self, message: Any) -> Any:
            slow_calls.append(threading.current_thread().name)
            time.sleep(0.5)
            raise codec.MessageError("slow and wrong")

    server.decoder = SlowDecoder()  # type: ignore[assignment]

    async def scenario() -> tuple[int, list[str]]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        try:
            replies = await asyncio.gather(
                *(server.answer(codec.packb({"i": i}), time.perf_counter(), None) for i in range(2))
            )
        finally:
            task.cancel()
            server.close()
        return ticks, [reply for reply, _ in replies]

    ticks, replies = asyncio.run(scenario())
    assert replies == ["invalid request: slow and wrong"] * 2
    assert ticks >= 15, f"the event loop ran only {ticks} times while two requests decoded for 0.5 s"
    assert slow_calls and all(name != "MainThread" for name in slow_calls)


# ---- the real server -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tiny_policy_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Default limits (32 MiB messages), one torch thread: the test process and the server share few cores."""
    log = tmp_path_factory.mktemp("server_limits_logs") / "server.log"
    with ServerProcess(["--checkpoint_path", str(tiny_policy_checkpoint), "--num_threads", "1"], log) as started:
        yield started


@contextmanager
def _connect(server: ServerProcess) -> Iterator[ClientConnection]:
    with connect(f"ws://{server.host}:{server.port}", compression=None, max_size=None) as ws:
        assert isinstance(ws.recv(timeout=30), bytes)  # the metadata
        yield ws


def _timed_infer(ws: ClientConnection, request: dict[str, Any], timeout_s: float) -> float:
    start = time.perf_counter()
    ws.send(client_msgpack.packb(request))
    try:
        reply = ws.recv(timeout=timeout_s)
    except TimeoutError:
        pytest.fail(f"a normal client's request was not answered within {timeout_s:.2f} s")
    assert isinstance(reply, bytes), reply
    assert client_msgpack.unpackb(reply)["actions"].shape == (4, 7)
    return time.perf_counter() - start


def test_a_flood_of_empty_arrays_does_not_stall_other_clients(server: ServerProcess) -> None:
    rng = np.random.default_rng(0)
    requests = [_request(rng, seed=i) for i in range(4)]
    attack = _empty_arrays(32 * MIB)  # exactly the 32 MiB message limit: websockets lets it through
    attacks = 3  # the server's default max_limit_violations: the third closes the connection

    with _connect(server) as normal:
        for request in requests:  # warm-up
            _timed_infer(normal, request, timeout_s=60)
        normal_s = statistics.median(_timed_infer(normal, requests[i % 4], timeout_s=60) for i in range(12))
        bound_s = max(5 * normal_s, normal_s + 1.0)
        rss_before = server.rss_mib()

        replies: list[Any] = []
        closed: list[ConnectionClosed] = []

        def attacker() -> None:
            with _connect(server) as ws:
                try:
                    for _ in range(attacks):
                        ws.send(attack)
                        replies.append(ws.recv(timeout=120))
                    replies.append(ws.recv(timeout=30))  # nothing more comes: the server closes
                except ConnectionClosed as err:
                    closed.append(err)

        thread = threading.Thread(target=attacker, daemon=True)
        thread.start()
        latencies, deadline = [], time.monotonic() + 120
        while (thread.is_alive() or len(latencies) < 5) and time.monotonic() < deadline:
            latencies.append(_timed_infer(normal, requests[len(latencies) % 4], timeout_s=bound_s))
        thread.join(timeout=30)
        rss_growth = server.rss_mib() - rss_before

    print(
        f"normal client: {normal_s * 1000:.1f} ms median before; during {attacks} x 32 MiB attacks "
        f"{len(latencies)} requests, median {statistics.median(latencies) * 1000:.1f} ms, max "
        f"{max(latencies) * 1000:.1f} ms (bound {bound_s * 1000:.0f} ms); server RSS +{rss_growth:.0f} MiB"
    )
    assert not thread.is_alive()
    assert len(replies) == attacks and all(isinstance(r, str) for r in replies), replies
    assert all(r.startswith("invalid request: ") and "max_array_len" in r for r in replies), replies
    assert closed and closed[0].rcvd is not None and closed[0].rcvd.code == 1008  # policy violation
    assert "decoding limits" in closed[0].rcvd.reason
    assert max(latencies) <= bound_s
    assert rss_growth < 256, f"server RSS grew by {rss_growth:.0f} MiB"
    assert server.alive()
