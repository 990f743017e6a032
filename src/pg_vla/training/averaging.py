"""Weight averaging of the trainable parameters: exponential moving average (EMA) and SWA.

Only the parameters that require grad when the average is created are averaged; frozen ones
(e.g. a frozen VLM backbone) are identical to the model's own and are never copied, so the
extra memory is one float32 copy of the trainable parameters.

Typical use in a training loop::

    avg = make_weight_average(AveragingConfig(kind="ema", decay=0.999), model)
    for step in range(num_steps):
        ...optimizer.step()...
        if avg is not None:
            avg.update(model, step)
    with avg.swapped_in(model):      # validation with the averaged weights
        evaluate(model)
    save(avg.averaged_state_dict(model))  # full state dict for inference

Parameters are matched by name (``model.named_parameters()``); every call checks that the model
still has the trainable parameter names and shapes seen at creation.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import torch
from torch import nn

AveragingKind = Literal["none", "ema", "swa"]
_KINDS = ("none", "ema", "swa")


@dataclasses.dataclass(frozen=True)
class AveragingConfig:
    """Which weight average to keep, and how.

    kind: "none" (no averaging), "ema" or "swa".
    decay: EMA decay in (0, 1): avg <- decay * avg + (1 - decay) * w (ignored by SWA).
    start_step: steps before it are ignored; the first update at/after it initializes the
        average to the current weights.
    update_every: only steps with (step - start_step) % update_every == 0 update the average.
    device: where the averages live: "cpu", "cuda" / "cuda:N", or None for each parameter's own
        device.
    """

    kind: AveragingKind = "none"
    decay: float = 0.999
    start_step: int = 0
    update_every: int = 1
    device: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"AveragingConfig.kind must be one of {_KINDS}, got {self.kind!r}")
        if isinstance(self.decay, bool) or not isinstance(self.decay, (int, float)):
            raise TypeError(f"AveragingConfig.decay must be a float, got {self.decay!r}")
        if not 0.0 < float(self.decay) < 1.0:
            raise ValueError(f"AveragingConfig.decay must be in (0, 1), got {self.decay}")
        if isinstance(self.start_step, bool) or not isinstance(self.start_step, int) or self.start_step < 0:
            raise ValueError(f"AveragingConfig.start_step must be an int >= 0, got {self.start_step!r}")
        if isinstance(self.update_every, bool) or not isinstance(self.update_every, int) or self.update_every < 1:
            raise ValueError(f"AveragingConfig.update_every must be an int >= 1, got {self.update_every!r}")
        _check_device(self.device)


def _check_device(device: str | None) -> torch.device | None:
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"averaging device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"averaging device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return dev


class WeightAverage:
    """Averaged float32 copy of a model's trainable parameters (base of `EMA` and `SWA`).

    Subclasses define how a new sample is blended in (`_blend`). Before the first update
    (``num_updates == 0``) there is no average yet: `copy_to` and `swapped_in` leave the model
    as it is and `averaged_state_dict` returns the raw weights.
    """

    kind: ClassVar[str] = "none"

    def __init__(
        self, model: nn.Module, *, start_step: int = 0, update_every: int = 1, device: str | None = None
    ) -> None:
        # Validates the shared options (decay is checked by the subclass).
        AveragingConfig(kind="none", start_step=start_step, update_every=update_every, device=device)
        self.start_step = start_step
        self.update_every = update_every
        self.device = device
        target = _check_device(device)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("weight averaging: the model has no trainable parameters")
        self._names: list[str] = [n for n, _ in trainable]
        self._shapes: dict[str, torch.Size] = {n: p.shape for n, p in trainable}
        with torch.no_grad():
            self._avgs: list[torch.Tensor] = [
                torch.empty(p.shape, dtype=torch.float32, device=target if target is not None else p.device)
                for _, p in trainable
            ]
        self.num_updates = 0
        self.last_step: int | None = None

    # ----------------------------------------------------------------- configuration

    @property
    def config(self) -> AveragingConfig:
        return AveragingConfig(
            kind=self.kind,
            start_step=self.start_step,  # type: ignore[arg-type]
            update_every=self.update_every,
            device=self.device,
            **self._extra_config(),
        )

    def _extra_config(self) -> dict[str, Any]:
        return {}

    @property
    def names(self) -> list[str]:
        """Names of the averaged (trainable) parameters, in `model.named_parameters()` order."""
        return list(self._names)

    @property
    def averages(self) -> dict[str, torch.Tensor]:
        """Name -> float32 averaged tensor (the live buffers; undefined while num_updates == 0)."""
        return dict(zip(self._names, self._avgs))

    def should_update(self, step: int) -> bool:
        """Whether `update(model, step)` would fold this step into the average."""
        return step >= self.start_step and (step - self.start_step) % self.update_every == 0

    # ----------------------------------------------------------------- model matching

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        """The model's trainable parameters in the recorded order; clear error on mismatch."""
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        missing = [n for n in self._names if n not in trainable]
        extra = [n for n in trainable if n not in self._shapes]
        bad_shape = [
            f"{n}: {tuple(trainable[n].shape)} != {tuple(self._shapes[n])}"
            for n in self._names
            if n in trainable and trainable[n].shape != self._shapes[n]
        ]
        if missing or extra or bad_shape:
            parts = []
            if missing:
                parts.append(f"missing or no longer trainable: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            if extra:
                parts.append(f"new trainable: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
            if bad_shape:
                parts.append(f"shape changed: {bad_shape[:5]}{' ...' if len(bad_shape) > 5 else ''}")
            raise ValueError(
                "weight averaging: the model's trainable parameters differ from those the "
                "average was created with (" + "; ".join(parts) + ")"
            )
        return [trainable[n] for n in self._names]

    # ----------------------------------------------------------------- averaging

    def _blend(self, avgs: list[torch.Tensor], ws: list[torch.Tensor]) -> None:
        """Fold the samples `ws` (float32, on the averages' devices) into `avgs` in place.

        Called with `num_updates` already counting this sample (>= 2)."""
        raise NotImplementedError

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> bool:
        """Fold the model's current trainable weights in if `step` is an averaging step.

        Returns whether the average changed."""
        if not self.should_update(step):
            return False
        params = self._params(model)
        ws = [p.detach().to(device=a.device, dtype=torch.float32) for p, a in zip(params, self._avgs)]
        self.num_updates += 1
        if self.num_updates == 1:
            torch._foreach_copy_(self._avgs, ws)
        else:
            for avgs, group in _by_device(self._avgs, ws):
                self._blend(avgs, group)
        self.last_step = step
        return True

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into the model's trainable parameters (cast to their
        dtype/device). No-op before the first update."""
        params = self._params(model)
        if self.num_updates == 0:
            return
        for p, a in zip(params, self._avgs):
            p.copy_(a)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily put the averaged weights into `model`; the raw ones are restored exactly
        on exit, also when the body raises."""
        params = self._params(model)
        if self.num_updates == 0:
            yield model
            return
        with torch.no_grad():
            raw = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                for p, a in zip(params, self._avgs):
                    p.copy_(a)
            yield model
        finally:
            with torch.no_grad():
                for p, r in zip(params, raw):
                    p.copy_(r)

    @torch.no_grad()
    def averaged_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """`model.state_dict()` with the averaged trainable parameters substituted (cast to the
        model's dtype/device); tied aliases of a parameter get the same tensor. Before the first
        update this is the raw state dict."""
        params = self._params(model)
        sd = model.state_dict()
        if self.num_updates == 0:
            return sd
        by_id = {id(p): a for p, a in zip(params, self._avgs)}
        for name, p in model.named_parameters(remove_duplicate=False):
            a = by_id.get(id(p))
            if a is None:
                continue
            if name not in sd:
                raise KeyError(f"weight averaging: parameter {name!r} is not a key of model.state_dict()")
            sd[name] = a.to(device=sd[name].device, dtype=sd[name].dtype, copy=True)
        return sd

    # ----------------------------------------------------------------- resume

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: config, number of updates, averages by name."""
        cfg = dataclasses.asdict(self.config)
        cfg.pop("device")  # where the averages live is a runtime choice, not part of the state
        return {
            "config": cfg,
            "num_updates": self.num_updates,
            "last_step": self.last_step,
            "averages": dict(zip(self._names, self._avgs)),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`; the config and the parameter names/shapes must match."""
        cfg = dataclasses.asdict(self.config)
        cfg.pop("device")
        saved = dict(state["config"])
        if saved != cfg:
            diff = {k: (saved.get(k), cfg.get(k)) for k in set(saved) | set(cfg) if saved.get(k) != cfg.get(k)}
            raise ValueError(f"weight averaging: saved config differs from this one (saved, current): {diff}")
        avgs = state["averages"]
        if set(avgs) != set(self._names):
            missing = sorted(set(self._names) - set(avgs))[:5]
            extra = sorted(set(avgs) - set(self._names))[:5]
            raise ValueError(f"weight averaging: saved parameter names differ (missing {missing}, extra {extra})")
        for n in self._names:
            if avgs[n].shape != self._shapes[n]:
                raise ValueError(
                    f"weight averaging: saved {n!r} has shape {tuple(avgs[n].shape)}, expected {tuple(self._shapes[n])}"
                )
        for n, a in zip(self._names, self._avgs):
            a.copy_(avgs[n])
        self.num_updates = int(state["num_updates"])
        self.last_step = state.get("last_step")

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self._extra_config().items())
        return (
            f"{type(self).__name__}(params={len(self._names)}{extra}, start_step={self.start_step}, "
            f"update_every={self.update_every}, device={self.device}, num_updates={self.num_updates})"
        )


def _by_device(
    avgs: list[torch.Tensor], ws: list[torch.Tensor]
) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    groups: dict[torch.device, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for a, w in zip(avgs, ws):
        ga, gw = groups.setdefault(a.device, ([], []))
        ga.append(a)
        gw.append(w)
    yield from groups.values()


class EMA(WeightAverage):
    """Exponential moving average: avg <- decay * avg + (1 - decay) * w."""

    kind: ClassVar[str] = "ema"

    def __init__(
        self,
        model: nn.Module,
        *,
        decay: float = 0.999,
        start_step: int = 0,
        update_every: int = 1,
        device: str | None = None,
    ) -> None:
        AveragingConfig(kind="ema", decay=decay)
        self.decay = float(decay)
        super().__init__(model, start_step=start_step, update_every=update_every, device=device)

    def _extra_config(self) -> dict[str, Any]:
        return {"decay": self.decay}

    def _blend(self, avgs: list[torch.Tensor], ws: list[torch.Tensor]) -> None:
        torch._foreach_lerp_(avgs, ws, 1.0 - self.decay)


class SWA(WeightAverage):
    """Uniform running mean of the sampled weights: avg_n = avg_{n-1} + (w - avg_{n-1}) / n."""

    kind: ClassVar[str] = "swa"

    def _blend(self, avgs: list[torch.Tensor], ws: list[torch.Tensor]) -> None:
        torch._foreach_lerp_(avgs, ws, 1.0 / self.num_updates)


def make_weight_average(config: AveragingConfig, model: nn.Module) -> WeightAverage | None:
    """The average `config` asks for over `model`'s trainable parameters, or None for kind "none"."""
    common = {"start_step": config.start_step, "update_every": config.update_every, "device": config.device}
    if config.kind == "ema":
        return EMA(model, decay=config.decay, **common)
    if config.kind == "swa":
        return SWA(model, **common)
    return None
