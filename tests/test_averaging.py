"""Weight averaging (EMA, SWA) against float64 closed forms and hand-computed values."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pg_vla.training.averaging import EMA, SWA, AveragingConfig, WeightAverage, make_weight_average


class Tiny(nn.Module):
    """A trainable Linear(3 -> 2) and a frozen Linear(2 -> 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frozen(self.head(x))


def _tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def _set_head(model: Tiny, value: float) -> None:
    with torch.no_grad():
        model.head.weight.fill_(value)
        model.head.bias.fill_(-value)


def _ema_ref(samples: list[torch.Tensor], decay: float) -> torch.Tensor:
    """Closed form of the EMA initialized at the first sample: float64."""
    n = len(samples)
    out = decay ** (n - 1) * samples[0].double()
    for k in range(1, n):
        out = out + (1 - decay) * decay ** (n - 1 - k) * samples[k].double()
    return out


def test_ema_hand_values_and_closed_form():
    model = _tiny()
    ema = EMA(model, decay=0.9)
    values = [1.0, 2.0, 4.0, -3.0]
    for step, v in enumerate(values):
        _set_head(model, v)
        assert ema.update(model, step)
    assert ema.num_updates == 4
    # By hand: 1 -> 0.9*1+0.1*2 = 1.1 -> 0.9*1.1+0.1*4 = 1.39 -> 0.9*1.39-0.3 = 0.951
    w = ema.averages["head.weight"]
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, torch.full((2, 3), 0.951), rtol=0, atol=1e-6)
    torch.testing.assert_close(ema.averages["head.bias"], torch.full((2,), -0.951), rtol=0, atol=1e-6)
    ref = _ema_ref([torch.full((2, 3), v) for v in values], 0.9)
    torch.testing.assert_close(w.double(), ref, rtol=0, atol=1e-6)


def test_ema_start_step_and_update_every():
    model = _tiny()
    ema = EMA(model, decay=0.5, start_step=3, update_every=2)
    updated = []
    for step in range(10):
        _set_head(model, float(step))
        if ema.update(model, step):
            updated.append(step)
    assert updated == [3, 5, 7, 9]
    assert ema.num_updates == 4 and ema.last_step == 9
    # By hand: init 3 -> 0.5*3+0.5*5 = 4 -> 0.5*4+0.5*7 = 5.5 -> 0.5*5.5+0.5*9 = 7.25
    torch.testing.assert_close(ema.averages["head.weight"], torch.full((2, 3), 7.25), rtol=0, atol=0)


def test_frozen_params_not_stored_and_untouched():
    model = _tiny()
    frozen_before = {k: v.clone() for k, v in model.frozen.state_dict().items()}
    ema = EMA(model, decay=0.9)
    assert ema.names == ["head.weight", "head.bias"]
    sd = ema.state_dict()
    assert set(sd["averages"]) == {"head.weight", "head.bias"}
    assert sum(t.numel() for t in sd["averages"].values()) == 3 * 2 + 2
    _set_head(model, 1.0)
    ema.update(model, 0)
    _set_head(model, 3.0)
    ema.update(model, 1)
    ema.copy_to(model)
    torch.testing.assert_close(model.head.weight, torch.full((2, 3), 1.2))
    torch.testing.assert_close(model.head.bias, torch.full((2,), -1.2))
    for k, v in model.frozen.state_dict().items():
        assert torch.equal(v, frozen_before[k])


def test_ema_tracks_sgd_trajectory():
    """EMA weights differ from the raw weights exactly as the decay predicts."""
    model = _tiny(1)
    decay = 0.8
    ema = EMA(model, decay=decay, start_step=2, update_every=1)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, generator=gen), torch.randn(16, 2, generator=gen)
    trajectory = []
    for step in range(8):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        trajectory.append(model.head.weight.detach().double().clone())
        ema.update(model, step)
    ref = _ema_ref(trajectory[2:], decay)
    got = ema.averages["head.weight"].double()
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    # The model moved, so the average lags behind the raw weights by a visible amount.
    assert (got - trajectory[-1]).abs().max() > 1e-3


def test_swa_is_mean_of_sampled_snapshots():
    model = _tiny(2)
    swa = SWA(model, start_step=1, update_every=3)
    gen = torch.Generator().manual_seed(3)
    snapshots = []
    for step in range(11):
        with torch.no_grad():
            model.head.weight.copy_(torch.randn(2, 3, generator=gen))
        if step >= 1 and (step - 1) % 3 == 0:
            snapshots.append(model.head.weight.detach().double().clone())
        swa.update(model, step)
    assert swa.num_updates == len(snapshots) == 4  # steps 1, 4, 7, 10
    ref = torch.stack(snapshots).mean(0)
    torch.testing.assert_close(swa.averages["head.weight"].double(), ref, rtol=0, atol=1e-6)


def test_swa_hand_values():
    model = _tiny()
    swa = SWA(model)
    for step, v in enumerate([1.0, 2.0, 6.0]):
        _set_head(model, v)
        swa.update(model, step)
    torch.testing.assert_close(swa.averages["head.weight"], torch.full((2, 3), 3.0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls", [EMA, SWA])
def test_state_dict_resume_continues_identically(cls):
    kw = {"decay": 0.7} if cls is EMA else {}
    model = _tiny()
    full = cls(model, start_step=1, update_every=2, **kw)
    values = [0.5, 1.0, -2.0, 3.0, 0.25, 7.0, -1.0, 2.0, 5.0]
    for step, v in enumerate(values[:5]):
        _set_head(model, v)
        full.update(model, step)
    saved = copy.deepcopy(full.state_dict())
    resumed = cls(_tiny(5), start_step=1, update_every=2, **kw)
    resumed.load_state_dict(saved)
    assert resumed.num_updates == full.num_updates
    for step, v in enumerate(values[5:], start=5):
        _set_head(model, v)
        full.update(model, step)
        resumed.update(model, step)
    assert resumed.num_updates == full.num_updates
    for name in full.names:
        assert torch.equal(resumed.averages[name], full.averages[name])


def test_load_state_dict_rejects_other_config():
    model = _tiny()
    ema = EMA(model, decay=0.9)
    with pytest.raises(ValueError, match="config"):
        EMA(model, decay=0.99).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="config"):
        SWA(model).load_state_dict(ema.state_dict())


def test_swapped_in_restores_raw_weights_also_on_exception():
    model = _tiny()
    ema = EMA(model, decay=0.5)
    _set_head(model, 2.0)
    ema.update(model, 0)
    _set_head(model, 4.0)
    ema.update(model, 1)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swapped_in(model) as m:
        assert m is model
        torch.testing.assert_close(model.head.weight, torch.full((2, 3), 3.0))
        torch.testing.assert_close(model.frozen.weight, raw["frozen.weight"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw[k])
    with pytest.raises(RuntimeError, match="boom"):
        with ema.swapped_in(model):
            torch.testing.assert_close(model.head.bias, torch.full((2,), -3.0))
            raise RuntimeError("boom")
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw[k])


def test_no_average_before_first_update():
    model = _tiny()
    ema = EMA(model, start_step=10)
    assert not ema.update(model, 3)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    ema.copy_to(model)
    with ema.swapped_in(model):
        pass
    sd = ema.averaged_state_dict(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw[k]) and torch.equal(sd[k], raw[k])


def test_averaged_state_dict_keys_and_values():
    model = _tiny()
    ema = EMA(model, decay=0.5)
    _set_head(model, 2.0)
    ema.update(model, 0)
    _set_head(model, 6.0)
    ema.update(model, 1)
    sd = ema.averaged_state_dict(model)
    assert list(sd) == list(model.state_dict())
    torch.testing.assert_close(sd["head.weight"], torch.full((2, 3), 4.0))
    assert torch.equal(sd["frozen.weight"], model.frozen.weight)
    # The model itself keeps its raw weights.
    torch.testing.assert_close(model.head.weight, torch.full((2, 3), 6.0))


def test_averaged_state_dict_casts_and_tied_aliases():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 2, bias=False)
            self.b = nn.Linear(2, 2, bias=False)
            self.b.weight = self.a.weight

    model = Tied().to(torch.bfloat16)
    swa = SWA(model)
    assert swa.names == ["a.weight"]
    for step, v in enumerate([1.0, 2.0]):
        with torch.no_grad():
            model.a.weight.fill_(v)
        swa.update(model, step)
    sd = swa.averaged_state_dict(model)
    assert set(sd) == {"a.weight", "b.weight"}
    for k in sd:
        assert sd[k].dtype == torch.bfloat16
        torch.testing.assert_close(sd[k], torch.full((2, 2), 1.5, dtype=torch.bfloat16))
    swa.copy_to(model)
    assert model.a.weight.dtype == torch.bfloat16
    torch.testing.assert_close(model.b.weight, torch.full((2, 2), 1.5, dtype=torch.bfloat16))


def test_mismatch_error_when_model_changed():
    model = _tiny()
    ema = EMA(model)
    model.frozen.requires_grad_(True)
    with pytest.raises(ValueError, match="new trainable"):
        ema.update(model, 0)
    model.frozen.requires_grad_(False)
    model.head = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="shape changed"):
        ema.copy_to(model)
    with pytest.raises(ValueError, match="missing"):
        ema.update(nn.Linear(3, 2), 0)


def test_config_validation_and_factory():
    model = _tiny()
    assert make_weight_average(AveragingConfig(), model) is None
    ema = make_weight_average(
        AveragingConfig(kind="ema", decay=0.99, start_step=5, update_every=2, device="cpu"), model
    )
    assert isinstance(ema, EMA) and ema.decay == 0.99 and ema.start_step == 5 and ema.update_every == 2
    assert ema.config == AveragingConfig(kind="ema", decay=0.99, start_step=5, update_every=2, device="cpu")
    swa = make_weight_average(AveragingConfig(kind="swa"), model)
    assert isinstance(swa, SWA) and isinstance(swa, WeightAverage)
    assert all(a.device.type == "cpu" for a in swa.averages.values())
    for bad in [
        dict(kind="polyak"),
        dict(decay=1.0),
        dict(decay=0.0),
        dict(decay=-0.1),
        dict(update_every=0),
        dict(start_step=-1),
        dict(device="tpu"),
        dict(update_every=1.5),
    ]:
        with pytest.raises(ValueError):
            AveragingConfig(**bad)
    with pytest.raises(ValueError, match="no trainable"):
        EMA(nn.Linear(2, 2).requires_grad_(False))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_with_cpu_averages():
    model = _tiny().cuda()
    ema = EMA(model, decay=0.5, device="cpu")
    _set_head(model, 2.0)
    ema.update(model, 0)
    _set_head(model, 4.0)
    ema.update(model, 1)
    assert ema.averages["head.weight"].device.type == "cpu"
    sd = ema.averaged_state_dict(model)
    assert sd["head.weight"].device.type == "cuda"
    with ema.swapped_in(model):
        torch.testing.assert_close(model.head.weight, torch.full((2, 3), 3.0, device="cuda"))
    torch.testing.assert_close(model.head.weight, torch.full((2, 3), 4.0, device="cuda"))
