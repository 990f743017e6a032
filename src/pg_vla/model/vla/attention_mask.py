"""One rule for every attention mask in the model.

Each token carries a block id and a valid flag. Token i may attend token j when j is valid and
j's block is not after i's block:

    allowed[i, j] = valid[j] and block[j] <= block[i]

Blocks are numbered in sequence order, so tokens see their own block bidirectionally and all
earlier blocks. pi0's sequence uses three blocks:

    block 0  image + text tokens (PaliGemma prefix-LM: bidirectional; text padding and masked views invalid)
    block 1  proprio tokens      (cond_steps of them)
    block 2  action tokens       (horizon_steps of them)

                     keys:  img  txt  pad | prop | act act
        queries  img         1    1    0  |  0   |  0   0
                 txt         1    1    0  |  0   |  0   0
                 pad         1    1    0  |  0   |  0   0    (padding queries read the prefix; their
                 prop        1    1    0  |  1   |  0   0     outputs are never used)
                 act         1    1    0  |  1   |  1   1
                 act         1    1    0  |  1   |  1   1

`mask_and_positions` turns the (valid, block) flags of a sequence into both the mask and the rotary
positions; every forward mode of the model (training, KV-cached prefix and denoising steps, text
logits and generation) builds them through it.

Text generation uses the same rule: the image + prompt prefix is block 0 and every generated
token opens a new block, which is exactly causal decoding after a bidirectional prefix.
No query row is ever empty as long as block 0 holds a valid token, so softmax never sees a row
of -inf (which would give NaN).
"""

from __future__ import annotations

import torch

IMAGE_TEXT_BLOCK = 0
PROPRIO_BLOCK = 1
ACTION_BLOCK = 2


def block_attention_mask(query_blocks: torch.Tensor, key_blocks: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """query_blocks (B, Tq), key_blocks (B, Tk) int, key_valid (B, Tk) bool -> allowed (B, 1, Tq, Tk) bool.

    The singleton dim broadcasts over attention heads in scaled_dot_product_attention.
    """
    allowed = key_valid[:, None, :] & (key_blocks[:, None, :] <= query_blocks[:, :, None])
    return allowed.unsqueeze(1)


def positions_from_valid(valid: torch.Tensor, offset: torch.Tensor | int = 0) -> torch.Tensor:
    """Rotary positions: valid tokens are numbered 0, 1, 2, ... (plus `offset` (B,)), skipping padding.

    valid (B, T) bool -> positions (B, T) long. A padding token gets its predecessor's position;
    nobody attends to it, so its value is irrelevant. Numbering only valid tokens makes the action
    tokens' positions independent of how much text padding the batch needed.
    """
    positions = valid.long().cumsum(dim=1) - 1
    if isinstance(offset, torch.Tensor):
        offset = offset.unsqueeze(1)
    return positions.clamp(min=0) + offset


def mask_and_positions(
    valid: torch.Tensor,
    blocks: torch.Tensor,
    past_valid: torch.Tensor | None = None,
    past_blocks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention mask and rotary positions of T new tokens that follow T_past cached ones.

    valid (B, T) bool, blocks (B, T) int of the new tokens; past_valid, past_blocks (B, T_past) those of
    the cached keys (None: no cache) -> mask (B, 1, T, T_past + T) bool (the rule above), positions (B, T)
    long (valid tokens counted from the start of the whole sequence, `positions_from_valid`).
    """
    if (past_valid is None) != (past_blocks is None):
        raise ValueError("past_valid and past_blocks go together")
    key_valid, key_blocks = valid, blocks
    if past_valid is not None:
        key_valid, key_blocks = torch.cat((past_valid, valid), dim=1), torch.cat((past_blocks, blocks), dim=1)
    mask = block_attention_mask(blocks, key_blocks, key_valid)
    positions = positions_from_valid(key_valid)[:, key_valid.shape[1] - valid.shape[1] :]
    return mask, positions
