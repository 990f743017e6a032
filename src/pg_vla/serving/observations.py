"""Request dict <-> `Observation`: which request key feeds which camera, the state, the prompt and the seed.

A robot's client sends a flat dict (msgpack map) per step, e.g. with the default keys

    {"observation/image": uint8 (H, W, 3), "observation/state": float (P,), "prompt": str, "seed": int (optional),
     "episode_start": bool (optional)}

`ObservationKeys` says which key is which (config/serve/*.yaml), `RequestDecoder` validates a request
against the policy (every camera present as uint8 (H, W, 3), P state values, a string prompt, an
integer seed by `pg_vla.utils.seeds`' rule, a boolean episode_start) and raises `RequestError` naming
the key and the problem. Keys the mapping does not name are ignored, so clients may send extra fields.
A policy with cond_steps C > 1 reads the last C frames and states: the server keeps that history per
connection (`pg_vla.policy.ObservationHistory`), empty on a new connection and emptied by a request
with episode_start true, so a client sends one frame per step as with any other policy.

`RequestDecoder.decode_limits` sizes the msgpack limits a request is decoded under (see
`pg_vla.serving.codec.DecodeLimits`) from what the policy reads: a bin may be as large as the
message (images of any size are resized), arrays hold at most max(256, cond_steps x P) elements (the
state as nested lists), the top-level map the fields read plus 64 more, strings 64 KiB (the prompt),
nesting 16 deep, and the whole message at most 4096 values beyond what the fields read themselves need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pg_vla.policy import Observation, Policy
from pg_vla.serving.codec import DecodeLimits
from pg_vla.utils.seeds import SEED_RULE, check_seed

# The same mapping as config/serve/default.yaml (openpi's single-arm key names).
DEFAULT_KEYS: dict[str, Any] = {
    "images": {
        "observation/image": "primary",
        "observation/secondary_image": "secondary",
        "observation/wrist_image": "wrist",
    },
    "state": "observation/state",
    "prompt": "prompt",
    "seed": "seed",
    "episode_start": "episode_start",
}


# Room left by `RequestDecoder.decode_limits` for fields the policy does not read (they are ignored).
SPARE_MAP_ENTRIES = 64
SPARE_OBJECTS = 4096
MIN_ARRAY_LEN = 256  # also covers ndarray shape lists (numpy allows at most 64 dimensions)
MAX_STR_LEN = 64 * 1024  # the prompt, key names, dtype strings
MAX_DEPTH = 16  # a request is a map of arrays or nested lists: depth 3 for a (cond_steps, P) list state


class RequestError(ValueError):
    """A request does not hold a valid observation for the served policy."""


@dataclass(frozen=True)
class ObservationKeys:
    """Request keys: images (request key -> camera role), state keys (concatenated), prompt, seed and
    episode_start (each optional in a request; None: not read)."""

    images: Mapping[str, str]
    state: tuple[str, ...]
    prompt: str
    seed: str | None = "seed"
    episode_start: str | None = "episode_start"

    @classmethod
    def from_mapping(cls, raw: Any, source: str = "observation keys") -> "ObservationKeys":
        if not isinstance(raw, Mapping):
            raise ValueError(
                f"{source}: expected a mapping with images, state, prompt (and seed), got {type(raw).__name__}"
            )
        unknown = sorted(set(raw) - {"images", "state", "prompt", "seed", "episode_start"})
        if unknown:
            raise ValueError(
                f"{source}: unknown entries {unknown}; expected images, state, prompt, seed, episode_start"
            )
        images = raw.get("images")
        if (
            not isinstance(images, Mapping)
            or not images
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in images.items())
        ):
            raise ValueError(
                f"{source}: 'images' must map request keys to camera roles "
                f"(e.g. observation/image: primary), got {images!r}"
            )
        state = raw.get("state")
        state_keys = (state,) if isinstance(state, str) else tuple(state) if isinstance(state, list) else ()
        if not state_keys or not all(isinstance(k, str) for k in state_keys):
            raise ValueError(f"{source}: 'state' must be a request key or a list of keys, got {state!r}")
        prompt, seed, start = raw.get("prompt"), raw.get("seed"), raw.get("episode_start")
        if not isinstance(prompt, str):
            raise ValueError(f"{source}: 'prompt' must be a request key, got {prompt!r}")
        for name, key in (("seed", seed), ("episode_start", start)):
            if key is not None and not isinstance(key, str):
                raise ValueError(f"{source}: {name!r} must be a request key or null, got {key!r}")
        named = [*images, *state_keys, prompt, *([seed] if seed else []), *([start] if start else [])]
        repeated = sorted({k for k in named if named.count(k) > 1})
        if repeated:
            raise ValueError(f"{source}: request keys {repeated} are used for more than one field")
        return cls(images=dict(images), state=state_keys, prompt=prompt, seed=seed, episode_start=start)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "ObservationKeys":
        """Read a YAML mapping (config/serve/default.yaml's format); None -> the default keys."""
        if path is None:
            return cls.from_mapping(DEFAULT_KEYS, "default observation keys")
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"observation key file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"observation key file {path} is not valid YAML: {err}") from err
        return cls.from_mapping(raw, str(path))

    def image_keys_for(self, camera_roles: Sequence[str]) -> dict[str, str]:
        """Camera role -> request key for each role the policy reads (a role may not be given twice)."""
        keys: dict[str, str] = {}
        for role in dict.fromkeys(camera_roles):
            matching = [key for key, r in self.images.items() if r == role]
            if len(matching) != 1:
                raise ValueError(
                    f"the policy reads camera role {role!r}, which the observation keys map from "
                    f"{'no request key' if not matching else f'several keys {matching}'}; "
                    f"mapped roles: {sorted(set(self.images.values()))}"
                )
            keys[role] = matching[0]
        return keys


@dataclass(frozen=True)
class InferenceRequest:
    """A validated request: the observation, the optional noise seed, and whether it starts an episode
    (the server then forgets the connection's observation history first)."""

    observation: Observation
    seed: int | None = None
    episode_start: bool = False


@dataclass
class RequestDecoder:
    """Validates request dicts against what a policy reads and turns them into `InferenceRequest`s."""

    keys: ObservationKeys
    camera_keys: dict[str, str]  # camera role -> request key
    state_dim: int
    cond_steps: int
    dataset_name: str = ""
    _required: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self._required = [*self.camera_keys.values(), *self.keys.state, self.keys.prompt]

    @classmethod
    def for_policy(cls, policy: Policy, keys: ObservationKeys) -> "RequestDecoder":
        return cls(
            keys,
            keys.image_keys_for(policy.camera_roles),
            policy.state_dim,
            policy.config.cond_steps,
            policy.dataset_name,
        )

    def decode_limits(self, max_message_bytes: int) -> DecodeLimits:
        """msgpack limits for one request to this policy (see the module docstring)."""
        history = self.cond_steps * self.state_dim  # the longest list a field read here needs
        fields = len(self._required) + (1 if self.keys.seed else 0) + (1 if self.keys.episode_start else 0)
        # per field: an ndarray map is 9 values plus its shape; a list state 1 + cond_steps + values
        needed = fields * (9 + 4) + len(self.keys.state) * (1 + self.cond_steps + history)
        return DecodeLimits(
            max_str_len=MAX_STR_LEN,
            max_bin_len=max_message_bytes,
            max_array_len=max(MIN_ARRAY_LEN, history),
            max_map_len=fields + SPARE_MAP_ENTRIES,
            max_ext_len=0,
            max_depth=MAX_DEPTH,
            max_objects=SPARE_OBJECTS + needed,
        )

    def decode(self, message: Any) -> InferenceRequest:
        if not isinstance(message, Mapping):
            raise RequestError(f"a request must be a map of observation fields, got {type(message).__name__}")
        missing = [key for key in self._required if key not in message]
        if missing:
            raise RequestError(
                f"request lacks key(s) {missing}; it has {sorted(map(str, message))}, the policy reads {self._required}"
            )
        images = {role: self._image(message[key], key, role) for role, key in self.camera_keys.items()}
        prompt = message[self.keys.prompt]
        if not isinstance(prompt, str):
            raise RequestError(f"{self.keys.prompt!r} must be a string (the instruction), got {_describe(prompt)}")
        return InferenceRequest(
            Observation(images=images, state=self._state(message), prompt=prompt),
            self._seed(message),
            self._episode_start(message),
        )

    def _image(self, value: Any, key: str, role: str) -> np.ndarray:
        if (
            isinstance(value, np.ndarray)
            and value.dtype == np.uint8
            and value.ndim == 3
            and value.shape[-1] == 3
            and 0 not in value.shape
        ):
            return value  # (H, W, 3)
        hint = ""
        if isinstance(value, np.ndarray) and value.ndim == 3 and value.shape[0] == 3 and value.shape[-1] != 3:
            hint = " (channel-first images must be transposed to (H, W, 3))"
        elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
            hint = " (convert float images to uint8 0..255)"
        raise RequestError(
            f"{key!r} (camera {role!r}) must be a uint8 array of shape (H, W, 3), got {_describe(value)}{hint}"
        )

    def _state(self, message: Mapping[str, Any]) -> np.ndarray:
        parts = [self._numeric(message[key], key) for key in self.keys.state]
        if len(parts) == 1:
            state = parts[0]
        else:  # several keys: each flattened, concatenated in the mapping's order
            state = np.concatenate([part.reshape(-1) for part in parts])
        what = self.keys.state[0] if len(parts) == 1 else "+".join(self.keys.state)
        p, c = self.state_dim, self.cond_steps
        if state.ndim == 1 and state.shape[0] != p:
            raise RequestError(
                f"{what!r} has {state.shape[0]} values, the policy expects {p}"
                f"{f' ({self.dataset_name})' if self.dataset_name else ''}"
            )
        if state.ndim != 1 and state.shape != (c, p):
            raise RequestError(f"{what!r} must have shape ({p},) or ({c}, {p}), got {state.shape}")
        if not np.all(np.isfinite(state)):
            raise RequestError(f"{what!r} contains NaN or infinite values")
        return state

    @staticmethod
    def _numeric(value: Any, key: str) -> np.ndarray:
        if isinstance(value, (list, tuple, int, float, np.generic, np.ndarray)) and not isinstance(value, bool):
            try:
                array = np.asarray(value)
            except ValueError as err:  # ragged nested lists
                raise RequestError(f"{key!r} is not a rectangular array of numbers: {err}") from None
            if array.dtype.kind in "iuf":
                return array.astype(np.float64)
        raise RequestError(f"{key!r} must be an array or list of numbers, got {_describe(value)}")

    def _seed(self, message: Mapping[str, Any]) -> int | None:
        key = self.keys.seed
        if key is None or message.get(key) is None:
            return None
        value = message[key]  # an int, a numpy integer or a 0-d integer array
        try:
            return check_seed(value)
        except ValueError:
            raise RequestError(f"{key!r} must be {SEED_RULE} or absent, got {_describe(value)}") from None

    def _episode_start(self, message: Mapping[str, Any]) -> bool:
        key = self.keys.episode_start
        if key is None or message.get(key) is None:
            return False
        value = message[key]  # a bool, a numpy bool or a 0-d bool array
        if isinstance(value, (bool, np.bool_)) or (
            isinstance(value, np.ndarray) and value.shape == () and value.dtype == bool
        ):
            return bool(value)
        raise RequestError(
            f"{key!r} must be a boolean (true at the first step of an episode) or absent, got {_describe(value)}"
        )


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        held = f" holding {value.item()!r}" if value.ndim == 0 else ""
        return f"{value.dtype} array of shape {value.shape}{held}"
    if isinstance(value, np.number):  # before float: np.float64 is a float
        return f"{value.dtype} {value.item()!r}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{type(value).__name__} {value!r}"
    return type(value).__name__


def server_metadata(policy: Policy, decoder: RequestDecoder, **extra: Any) -> dict[str, Any]:
    """What the server sends first on every connection: the request fields it reads and what it returns."""
    policy_spec = policy.observation_spec()
    spec: dict[str, dict[str, Any]] = {}
    for role, key in decoder.camera_keys.items():
        spec[key] = {**policy_spec[role], "camera": role}
    state_keys = list(decoder.keys.state)
    if len(state_keys) == 1:
        spec[state_keys[0]] = dict(policy_spec["state"])
    else:  # several keys: each flattened, concatenated in order into the (P,) state
        for key in state_keys:
            spec[key] = {
                "kind": "state",
                "dtype": "float32",
                "note": f"flattened and concatenated in the order {state_keys} into the "
                f"{policy.state_dim} state values",
            }
    spec[decoder.keys.prompt] = policy_spec["prompt"]
    if decoder.keys.seed:
        spec[decoder.keys.seed] = {
            "shape": [],
            "dtype": "int64",
            "kind": "seed",
            "optional": True,
            "note": f"noise seed, {SEED_RULE} (a 0-d array, numpy or Python integer): "
            "the same seed and observation give the same actions; absent -> fresh "
            "noise",
        }
    if decoder.keys.episode_start:
        spec[decoder.keys.episode_start] = {
            "shape": [],
            "dtype": "bool",
            "kind": "episode_start",
            "optional": True,
            "note": "true at the first step of an episode: the server forgets this connection's observation "
            f"history (the policy reads the last {policy.config.cond_steps} frames and states; a new "
            "connection starts with none)",
        }
    return {
        "policy_name": policy.name,
        "dataset_name": policy.dataset_name,
        "camera_roles": list(policy.camera_roles),
        "observation_spec": spec,
        "state_dim": policy.state_dim,
        "action_horizon": policy.horizon,
        "action_dim": policy.action_dim,
        "cond_steps": policy.config.cond_steps,
        "action_units": "robot units (de-normalized with the checkpoint's statistics)",
        **extra,
    }
