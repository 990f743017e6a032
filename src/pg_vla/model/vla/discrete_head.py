"""Discrete action head: each action dimension of the chunk classified into uniform bins.

With `action_head=discrete` pi0's action expert and flow matching are replaced by classification
(as RT-1/RT-2 and OpenVLA bin actions, here with a small MLP instead of the LM vocabulary):

    [ image tokens | text (padded) | readout (H learned tokens) ]      all run by the VLM expert
      block 0: bidirectional prefix  block 2: sees the prefix and the readout tokens

Pooling choice: H learned readout ("action query") tokens, one per chunk step, are appended after the
prefix. The prefix cannot see them, so the image/text computation is exactly PaliGemma's prefix-LM;
each readout token attends to all valid image/text tokens in every layer and so pools the prefix
with learned, per-step attention rather than a fixed mean (in the spirit of Octo's readout tokens).
This matters when the VLM is frozen (`train_vlm=false`): the readout embeddings still learn what to
read. Each readout token's final output, joined with the flattened normalized proprio history
(`discrete_use_proprio`), goes through one MLP shared by all steps to A x K logits:

    readout output (B, H, D) ++ proprio (B, C*P) -> MLP -> logits (B, H, A, K)

Bins: K uniform bins over [low, high] (`action_bounds`, by default the normalized range [-1, 1]);
bin k covers [low + k w, low + (k + 1) w) with w = (high - low) / K, the last one closed. A value is
clipped into the range before binning, so the round trip value -> bin -> bin centre is off by at
most w / 2 inside the range. Decoding takes the centre of the arg-max bin (`argmax`) or the
expectation of the centres under the softmax (`expected`). The loss is the cross-entropy of the
true bins, averaged over every dimension of the valid chunk steps (`action_mask`).

Shapes: B batch, H horizon, A action dim, K bins, C cond steps, P proprio dim, D VLM hidden.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pg_vla.model.linear import Linear
from pg_vla.model.vla.config import PiZeroConfig

READOUT_INIT_STD = 0.02  # as the other weights trained from scratch (Gemma's initializer_range)


# ---- binning (pure functions; tensors of any leading shape) ------------------------------------------
def bin_width(low: float, high: float, num_bins: int) -> float:
    return (high - low) / num_bins


def bin_centers(low: float, high: float, num_bins: int, device: torch.device | None = None) -> torch.Tensor:
    """-> (K,) float32 centres low + (k + 0.5) w."""
    k = torch.arange(num_bins, dtype=torch.float64, device=device)
    return (low + (k + 0.5) * bin_width(low, high, num_bins)).float()


def actions_to_bins(actions: torch.Tensor, low: float, high: float, num_bins: int) -> torch.Tensor:
    """actions (...) -> bin indices (...) long in [0, K); values outside [low, high] go to the edge bins."""
    scaled = (actions.double() - low) / bin_width(low, high, num_bins)  # (...) in bin units
    return scaled.floor().clamp(0, num_bins - 1).long()


def bins_to_actions(bins: torch.Tensor, low: float, high: float, num_bins: int) -> torch.Tensor:
    """bin indices (...) -> their centres (...) float32."""
    return bin_centers(low, high, num_bins, bins.device)[bins]


def decode_logits(logits: torch.Tensor, low: float, high: float, decoding: str) -> torch.Tensor:
    """logits (..., K) -> continuous values (...) float32: arg-max bin centre or expectation over centres."""
    centers = bin_centers(low, high, logits.shape[-1], logits.device)  # (K,)
    if decoding == "argmax":
        return centers[logits.argmax(dim=-1)]
    if decoding == "expected":
        return torch.softmax(logits.float(), dim=-1) @ centers
    raise ValueError(f"unknown discrete decoding {decoding!r} (argmax or expected)")


def binned_cross_entropy(
    logits: torch.Tensor, target_bins: torch.Tensor, action_mask: torch.Tensor | None
) -> torch.Tensor:
    """logits (B, H, A, K), target bins (B, H, A), mask (B, H) bool -> mean cross-entropy over valid entries."""
    per_entry = F.cross_entropy(logits.float().flatten(0, 2), target_bins.flatten(), reduction="none")
    per_entry = per_entry.view(target_bins.shape)  # (B, H, A)
    if action_mask is None:
        return per_entry.mean()
    weight = action_mask.to(per_entry.dtype).unsqueeze(-1).expand_as(per_entry)
    return (per_entry * weight).sum() / weight.sum().clamp(min=1.0)


# ---- the head ----------------------------------------------------------------------------------------
class DiscreteActionHead(nn.Module):
    """Learned readout tokens (H, D) and the MLP from their outputs (and proprio) to bin logits."""

    def __init__(self, config: PiZeroConfig):
        super().__init__()
        self.horizon, self.action_dim = config.horizon_steps, config.action_dim
        self.num_bins = config.num_action_bins
        self.low, self.high = config.action_bounds
        self.decoding = config.discrete_decoding
        uses_proprio = config.use_proprio and config.discrete_use_proprio
        self.proprio_size = config.cond_steps * config.proprio_dim if uses_proprio else 0
        width = config.vlm.hidden_size
        self.readout = nn.Parameter(torch.randn(config.horizon_steps, width) * READOUT_INIT_STD)  # (H, D)
        layers: list[nn.Module] = []
        in_dim = width + self.proprio_size
        for hidden in config.discrete_mlp_hidden_dims:
            layers += [Linear(in_dim, hidden), nn.GELU(approximate="tanh"), nn.Dropout(config.discrete_dropout)]
            in_dim = hidden
        layers.append(Linear(in_dim, config.action_dim * config.num_action_bins))
        self.mlp = nn.Sequential(*layers)

    def readout_tokens(self, batch: int) -> torch.Tensor:
        """-> (B, H, D) the learned readout tokens, one per chunk step."""
        return self.readout.unsqueeze(0).expand(batch, -1, -1)

    def forward(self, readout_out: torch.Tensor, proprio: torch.Tensor | None) -> torch.Tensor:
        """readout outputs (B, H, D), proprio (B, C, P) normalized -> logits (B, H, A, K) float32."""
        b, h = readout_out.shape[:2]
        x = readout_out.to(self.readout.dtype)
        if self.proprio_size:
            if proprio is None or proprio[0].numel() != self.proprio_size:
                raise ValueError(
                    f"the discrete head reads a proprio history of {self.proprio_size} values per "
                    f"sample, got {None if proprio is None else tuple(proprio.shape)}"
                )
            flat = proprio.reshape(b, 1, self.proprio_size).to(x.dtype).expand(-1, h, -1)  # (B, H, C*P)
            x = torch.cat((x, flat), dim=-1)
        logits = self.mlp(x)  # (B, H, A*K)
        return logits.view(b, h, self.action_dim, self.num_bins).float()

    # ---- conversions with this head's bins ----
    def to_bins(self, actions: torch.Tensor) -> torch.Tensor:
        """actions (..., A) normalized -> bin indices (..., A) long."""
        return actions_to_bins(actions, self.low, self.high, self.num_bins)

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, H, A, K) -> continuous chunk (B, H, A) float32, per `discrete_decoding`."""
        return decode_logits(logits, self.low, self.high, self.decoding)

    def loss(self, logits: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor | None) -> torch.Tensor:
        """Cross-entropy of the bins of `actions` (B, H, A) over the valid steps of `action_mask` (B, H)."""
        return binned_cross_entropy(logits, self.to_bins(actions.float()), action_mask)


class DiscreteHead:
    """The discrete head's use in the model: bin cross-entropy loss and decoded-bin sampling.

    Holds no parameters: it adds `DiscreteActionHead` to the model as `action_decoder` (`action_decoder.*`
    in checkpoints) and runs the model's `bin_logits` (looked up on the model, so a compiled version is used).
    """

    name = "discrete"
    reads_vlm_outputs = True  # the readout tokens' outputs are the VLM expert's own

    def __init__(self, config: PiZeroConfig):
        self.config = config

    def experts(self) -> dict:
        """No expert beside the VLM: the readout tokens run through the VLM expert."""
        return {}

    def add_modules(self, model: nn.Module) -> None:
        model.action_decoder = DiscreteActionHead(self.config)

    def loss(
        self,
        model,
        images: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor | None,
        proprio: torch.Tensor,
        actions: torch.Tensor,
        noise: torch.Tensor | None,
        time: torch.Tensor | None,
        action_mask: torch.Tensor | None,
        image_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Cross-entropy of the action bins; `noise` and `time` are ignored."""
        logits = model.bin_logits(images, text_ids, text_mask, proprio, image_mask)  # (B, H, A, K)
        return model.action_decoder.loss(logits, actions, action_mask)

    def sample(
        self,
        model,
        images: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor | None,
        proprio: torch.Tensor,
        noise: torch.Tensor | None,
        num_steps: int | None,
        use_cache: bool,
        clip: bool,
        image_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The decoded bins (`discrete_decoding`) of one pass (B, H, A) float32; noise, steps and cache unused."""
        return model.action_decoder.decode(model.bin_logits(images, text_ids, text_mask, proprio, image_mask))
