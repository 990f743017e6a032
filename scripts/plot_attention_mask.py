"""Draw pi0's block attention mask for a small example sequence (the picture in README.md).

Usage:
    uv run scripts/plot_attention_mask.py [--output media/attention_mask.png]
"""

from __future__ import annotations

from pg_vla.utils import quiet

quiet.configure()  # before the libraries load: TF/absl logging, known warnings, --verbose

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pg_vla.model.vla.attention_mask import (
    ACTION_BLOCK,
    IMAGE_TEXT_BLOCK,
    PROPRIO_BLOCK,  # noqa: E402
    block_attention_mask,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="media/attention_mask.png")
    args = parser.parse_args()
    layout = [
        ("img", 4, IMAGE_TEXT_BLOCK, True),
        ("txt", 3, IMAGE_TEXT_BLOCK, True),
        ("pad", 2, IMAGE_TEXT_BLOCK, False),
        ("prop", 1, PROPRIO_BLOCK, True),
        ("act", 4, ACTION_BLOCK, True),
    ]
    names = [name for name, n, _, _ in layout for _ in range(n)]
    blocks = torch.tensor([[block for _, n, block, _ in layout for _ in range(n)]])
    valid = torch.tensor([[ok for _, n, _, ok in layout for _ in range(n)]])
    mask = block_attention_mask(blocks, blocks, valid)[0, 0]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(mask.numpy(), cmap="Blues", vmin=-0.3, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("key (attended)")
    ax.set_ylabel("query")
    ax.set_title("pi0 block attention (blue: may attend)")
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(args.output)


if __name__ == "__main__":
    main()
