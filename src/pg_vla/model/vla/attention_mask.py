"""One rule for every attention mask in the model.

Each token carries a block id and a valid flag. Token i may attend token j when j is valid and
j's block is not after i's block:

    allowed[i, j] = valid[j] and block[j] <= block[i]

Blocks are numbered in sequence order, so tokens see their own block bidirectionally and all
earlier blocks. pi0's sequence uses three blocks:

    block 0  image + text tokens (PaliGemma prefix-LM: bidirectional; text padding invalid)
    block 1  proprio tokens      (cond_steps of them)
    block 2  action tokens       (horizon_steps of them)

                     keys:  img  txt  pad | prop | act act
        queries  img         1    1    0  |  0   |  0   0
                 txt         1    1    0  |  0   |  0   0
                 pad         1    1    0  |  0   |  0   0    (padding queries read the prefix; their
                 prop        1    1    0  |  1   |  0   0     outputs are never used)
                 act         1    1    0  |  1   |  1   1
                 act         1    1    0  |  1   |  1   1

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


def block_attention_mask(query_blocks: torch.Tensor, key_blocks: torch.Tensor,
                         key_valid: torch.Tensor) -> torch.Tensor:
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
