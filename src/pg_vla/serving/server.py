"""Websocket policy server speaking openpi's protocol (the `openpi_client.websocket_client_policy` client).

Per connection:

    server -> client   binary msgpack: the metadata dict (observation_spec, action_horizon, action_dim, ...)
    client -> server   binary msgpack: an observation dict (keys: see `pg_vla.serving.observations`); a
                       policy with cond_steps > 1 reads the connection's last cond_steps observations
                       (`ObservationHistory`, empty at connection and at a request with episode_start)
    server -> client   binary msgpack: {"actions": float32 (H, A) in robot units,
                                        "policy_timing": {"infer_ms"}, "server_timing": {"infer_ms", ...}}
                       or a text frame with the error message (the connection stays open)
    ... one reply per request, in order, until the client closes.

Limits: a message larger than `max_message_bytes` closes the connection with code 1009 (message too
big) before it is read; at most `MAX_QUEUED_MESSAGES` received messages wait per connection; more than
`max_connections` open connections are refused with HTTP 503. With an API key, the opening handshake
must carry `Authorization: Api-Key <key>` (what openpi_client sends) or is refused with HTTP 401.
`GET /healthz` answers 200 without opening a websocket.

Decoding: each request is decoded and validated in a pool of `decode_threads` worker threads, never
on the event loop, under msgpack limits sized to the observation spec
(`RequestDecoder.decode_limits`: lengths of strings, bins, arrays and maps, nesting depth, values per
message). The limits are checked from the message's headers before anything is built, so a message
beyond them costs the server no more than reading it; it gets the text reply `invalid request: <what>
exceeds <limit>=<value>` and the connection stays usable. After `max_limit_violations` such messages
on one connection the server sends that reply and closes the connection with code 1008 (policy
violation). Each connection also has a budget of `connection_bytes_per_s` request bytes (bursts up
to `max_message_bytes`) and `connection_messages_per_s` requests (bursts of one second's worth): a
request beyond it waits before decoding (and, while it waits, the connection is not read further),
so one client cannot monopolise the decoder; the wait counts in its `server_timing.infer_ms`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from pg_vla.policy import ObservationHistory, Policy
from pg_vla.serving.batching import BatchingRunner
from pg_vla.serving.codec import LimitError, MessageError, packb, unpackb
from pg_vla.serving.observations import InferenceRequest, ObservationKeys, RequestDecoder, RequestError, server_metadata

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_QUEUED_MESSAGES = 2  # per connection; the protocol is lock-step, so one is the normal case
PING_INTERVAL_S = 20.0  # websocket keepalive (the event loop never runs the model, so pings are answered)
HEALTH_PATH = "/healthz"
POLICY_VIOLATION = 1008  # websocket close code for a connection that keeps exceeding the decoding limits


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # 0 picks a free port (reported to `on_ready`)
    api_key: str | None = None
    max_message_bytes: int = 32 * MIB
    max_batch_size: int = 8
    max_connections: int = 64
    decode_threads: int = 2  # worker threads that decode and validate requests (shared by all connections)
    connection_bytes_per_s: float = 128 * MIB  # per connection, sustained; bursts up to max_message_bytes
    connection_messages_per_s: float = 200.0  # per connection, sustained; bursts of one second's worth
    max_limit_violations: int = 3  # messages beyond the decoding limits before a connection is closed (1008)

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be at least 1024, got {self.max_message_bytes}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")
        if self.decode_threads < 1:
            raise ValueError(f"decode_threads must be >= 1, got {self.decode_threads}")
        for name in ("connection_bytes_per_s", "connection_messages_per_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_limit_violations < 1:
            raise ValueError(f"max_limit_violations must be >= 1, got {self.max_limit_violations}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty")


class ConnectionBudget:
    """Token buckets for one connection's request bytes and requests: `charge` -> seconds to wait first.

    A request is always charged (a bucket may go into debt); the wait is the time the refill takes to
    pay the debt back, so a client that waits before sending its next request is charged its rate.
    """

    def __init__(
        self, bytes_per_s: float, messages_per_s: float, burst_bytes: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._rates = (float(bytes_per_s), float(messages_per_s))
        self._capacity = (max(float(burst_bytes), float(bytes_per_s)), max(1.0, float(messages_per_s)))
        self._tokens = list(self._capacity)
        self._last = clock()

    def charge(self, nbytes: int) -> float:
        now = self._clock()
        elapsed, self._last = max(0.0, now - self._last), now
        wait = 0.0
        for i, cost in enumerate((float(nbytes), 1.0)):
            self._tokens[i] = min(self._capacity[i], self._tokens[i] + elapsed * self._rates[i]) - cost
            wait = max(wait, -self._tokens[i] / self._rates[i])
        return wait


class PolicyServer:
    """Serves one `Policy` to any number of websocket clients (see the module docstring)."""

    def __init__(
        self,
        policy: Policy,
        keys: ObservationKeys,
        config: ServerConfig = ServerConfig(),
        checkpoint: str | None = None,
    ) -> None:
        self.policy = policy
        self.config = config
        self.decoder = RequestDecoder.for_policy(policy, keys)
        self.limits = self.decoder.decode_limits(config.max_message_bytes)
        self.runner = BatchingRunner(policy, config.max_batch_size)
        self.metadata = server_metadata(
            policy,
            self.decoder,
            checkpoint=checkpoint,
            max_message_bytes=config.max_message_bytes,
            max_batch_size=config.max_batch_size,
            decode_limits=asdict(self.limits),
        )
        self._metadata_message = packb(self.metadata)
        self._connections = 0
        self._decode_pool: ThreadPoolExecutor | None = None

    async def serve(self, stop: asyncio.Event, on_ready: Callable[[str, int], None] | None = None) -> None:
        """Serve until `stop` is set; `on_ready(host, port)` runs once the socket listens."""
        self.runner.start()
        try:
            async with serve(
                self._handle,
                self.config.host,
                self.config.port,
                process_request=self._admit,
                compression=None,
                max_size=self.config.max_message_bytes,
                max_queue=MAX_QUEUED_MESSAGES,
                ping_interval=PING_INTERVAL_S,
                ping_timeout=PING_INTERVAL_S,
            ) as server:
                host, port = server.sockets[0].getsockname()[:2]
                if on_ready is not None:
                    on_ready(host, port)
                await stop.wait()
        finally:
            await self.runner.close()
            self.close()

    def close(self) -> None:
        """Stop the decoding threads (a later request starts new ones)."""
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=False, cancel_futures=True)
            self._decode_pool = None

    def decode_request(self, message: bytes) -> InferenceRequest:
        """Received bytes -> validated request (in a decoding thread); MessageError/RequestError if not."""
        return self.decoder.decode(unpackb(message, self.limits))

    # ---- handshake --------------------------------------------------------------------------------
    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """Before the websocket opens: health check, API key, connection limit (None lets it through)."""
        if request.path == HEALTH_PATH:
            return connection.respond(HTTPStatus.OK, "OK\n")
        if self.config.api_key is not None:
            given = request.headers.get("Authorization", "")
            expected = f"Api-Key {self.config.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                log.warning("refused %s: %s API key", connection.remote_address, "wrong" if given else "no")
                return connection.respond(
                    HTTPStatus.UNAUTHORIZED,
                    "missing or wrong API key: send the header 'Authorization: Api-Key <key>'\n",
                )
        if self._connections >= self.config.max_connections:
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE, f"the server already has {self._connections} connections (its limit)\n"
            )
        return None

    # ---- one connection -----------------------------------------------------------------------------
    async def _handle(self, websocket: ServerConnection) -> None:
        peer = websocket.remote_address
        self._connections += 1
        log.info("connected: %s (%d open)", peer, self._connections)
        config = self.config
        budget = ConnectionBudget(
            config.connection_bytes_per_s, config.connection_messages_per_s, burst_bytes=config.max_message_bytes
        )
        violations = 0
        try:
            await websocket.send(self._metadata_message)
            prev_total_ms: float | None = None
            history = ObservationHistory(self.policy.config.cond_steps)  # this connection's episode so far
            async for message in websocket:
                received = time.perf_counter()
                wait = budget.charge(len(message))
                if wait > 0:
                    await asyncio.sleep(wait)
                reply, beyond_limits = await self.answer(message, received, prev_total_ms, history)
                await websocket.send(reply)
                prev_total_ms = (time.perf_counter() - received) * 1000.0
                violations += beyond_limits
                if violations >= config.max_limit_violations:
                    log.warning("closing %s: %d messages beyond the decoding limits", peer, violations)
                    await websocket.close(POLICY_VIOLATION, f"{violations} messages exceeded the decoding limits")
                    break
        except ConnectionClosed as closed:
            log.info("connection %s closed: %s", peer, closed)
        finally:
            self._connections -= 1
            log.info("disconnected: %s (%d open)", peer, self._connections)

    async def answer(
        self,
        message: str | bytes,
        received: float,
        prev_total_ms: float | None,
        history: ObservationHistory | None = None,
    ) -> tuple[str | bytes, bool]:
        """One request -> (packed reply or the error text, whether it exceeded the decoding limits).
        `history`: the connection's observation history (None: a fresh one, as for a new connection)."""
        history = history if history is not None else ObservationHistory(self.policy.config.cond_steps)
        try:
            if isinstance(message, str):
                raise RequestError("requests must be binary msgpack messages, got a text frame")
            if self._decode_pool is None:
                self._decode_pool = ThreadPoolExecutor(self.config.decode_threads, thread_name_prefix="decode")
            request = await asyncio.get_running_loop().run_in_executor(self._decode_pool, self.decode_request, message)
            if request.episode_start:
                history.reset()
            request = replace(request, observation=history.push(request.observation))
            result = await self.runner.infer(request)
        except (MessageError, RequestError) as err:
            log.info("invalid request: %s", err)
            return f"invalid request: {err}", isinstance(err, LimitError)
        except ValueError as err:  # raised by Policy for an observation it cannot read
            log.info("invalid observation: %s", err)
            return f"invalid observation: {err}", False
        except Exception as err:  # noqa: BLE001 - reported to this client, the server keeps serving
            log.exception("inference failed")
            return f"inference failed: {type(err).__name__}: {err}", False
        server_timing: dict[str, Any] = {
            "infer_ms": (time.perf_counter() - received) * 1000.0,
            "queue_ms": result.queue_ms,
            "batch_size": result.batch_size,
        }
        if prev_total_ms is not None:
            server_timing["prev_total_ms"] = prev_total_ms
        return packb(
            {"actions": result.actions, "policy_timing": {"infer_ms": result.infer_ms}, "server_timing": server_timing}
        ), False
