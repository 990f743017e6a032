"""Random tiny PaliGemma checkpoints in the on-disk layout of ``google/paligemma-3b-pt-224``.

The folders written here are meant for offline tests and demos of the loader, tokenizer and processor
code. They hold randomly initialised weights, so the "model" knows nothing, but they contain the files
transformers needs to load a PaliGemma model, tokenizer and processor offline::

    config.json                        PaliGemmaConfig (text_config = gemma, vision_config = siglip_vision_model)
    generation_config.json             bos 2 / eos 1 / pad 0
    model.safetensors                  or model-0000k-of-0000n.safetensors + model.safetensors.index.json
    tokenizer.json, tokenizer_config.json
    processor_config.json              PaliGemmaProcessor + SiglipImageProcessor settings (incl. image_seq_length)

The hub folder additionally has the SentencePiece ``tokenizer.model`` (not needed by the fast tokenizer)
and keeps the image processor settings in ``preprocessor_config.json``; transformers 5.23 writes them into
``processor_config.json`` instead (under ``"image_processor"``).

Weight key layout
-----------------
``save_pretrained`` of transformers 5.23 converts the in-memory names (``model.language_model.*``,
``model.vision_tower.*``, ``model.multi_modal_projector.*``) back to the original PaliGemma names, except
that the SigLIP tower is written without its ``vision_model.`` level. By default
(``hub_layout=True``) the files are rewritten afterwards so that the keys are exactly those of the hub
checkpoint, which ``PaliGemmaForConditionalGeneration.from_pretrained`` loads as well::

    language_model.model.embed_tokens.weight                          (V, D)
    language_model.model.layers.{i}.input_layernorm.weight            (D,)
    language_model.model.layers.{i}.self_attn.{q,k,v,o}_proj.weight   q: (H*hd, D), k/v: (K*hd, D), o: (D, H*hd)
    language_model.model.layers.{i}.post_attention_layernorm.weight   (D,)
    language_model.model.layers.{i}.mlp.{gate,up,down}_proj.weight    gate/up: (F, D), down: (D, F)
    language_model.model.norm.weight                                  (D,)
    multi_modal_projector.linear.{weight,bias}                        (D, Dv), (D,)
    vision_tower.vision_model.embeddings.patch_embedding.{weight,bias}    (Dv, 3, P, P), (Dv,)
    vision_tower.vision_model.embeddings.position_embedding.weight        (N_img, Dv)
    vision_tower.vision_model.encoder.layers.{i}.layer_norm{1,2}.{weight,bias}
    vision_tower.vision_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias}
    vision_tower.vision_model.encoder.layers.{i}.mlp.fc{1,2}.{weight,bias}
    vision_tower.vision_model.post_layernorm.{weight,bias}

With ``hub_layout=False`` the vision keys are the ones ``save_pretrained`` writes natively:
``vision_tower.embeddings.*``, ``vision_tower.encoder.*``, ``vision_tower.post_layernorm.*``.
There is no ``lm_head.weight`` in either layout: the head is tied to ``embed_tokens``
(``tie_word_embeddings=True``), as in the real checkpoint.

Tokenizer
---------
A byte-fallback BPE (the model family of Gemma's tokenizer) trained with the ``tokenizers`` library on a
small built-in corpus of robot instructions, wrapped in ``transformers.GemmaTokenizer`` (the class that
``AutoTokenizer`` maps PaliGemma to). Id layout, mirroring the real PaliGemma vocabulary::

    0 <pad>   1 <eos>   2 <bos>   3 <unk>   4 <mask>
    5 .. 260                 <0x00> .. <0xFF>  byte-fallback tokens (any text encodes without <unk>)
    261 .. B-1               learned pieces: printable ASCII characters ("▁" stands for a space), "\\n",
                             merges (then <unusedN> fillers if training yields fewer pieces)
    B .. B+1023              <loc0000> .. <loc1023>
    B+1024 .. B+1151         <seg000> .. <seg127>
    B+1152                   <image>   (special token, also reachable as ``tokenizer.image_token``)

with ``B = base_vocab_size`` (512 by default, so 1665 tokens in total). The location and segmentation
tokens are included because ``PaliGemmaProcessor`` adds them to any tokenizer it wraps; having them in the
saved vocabulary keeps ``len(tokenizer)`` equal to the model's ``vocab_size`` in every loading path.
Encoding adds ``<bos>`` in front (``add_bos_token=True``, no ``<eos>``), as Gemma's tokenizer does; the
rule is stored as the post-processor in ``tokenizer.json``. (transformers 5.23 does not persist the
``add_bos_token`` flag itself, so after ``AutoTokenizer.from_pretrained`` the attribute reads False while
``tokenizer(text)`` still starts with ``<bos>``.) As in Gemma, spaces are normalised to "▁", no prefix space
is added, and merges never span a space or a newline, so "\\n" is always its own token (id 261 here).

Command line::

    python -m pg_vla.model.paligemma.tiny_checkpoint --output_dir DIR --variant gqa [--seed 0] [--max_shard_size 200KB]
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import (
    GemmaTokenizer,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
)

PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN, MASK_TOKEN = "<pad>", "<eos>", "<bos>", "<unk>", "<mask>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN, MASK_TOKEN)  # ids 0..4
IMAGE_TOKEN = "<image>"
LOCATION_TOKENS: tuple[str, ...] = tuple(f"<loc{i:04d}>" for i in range(1024))
SEGMENTATION_TOKENS: tuple[str, ...] = tuple(f"<seg{i:03d}>" for i in range(128))
BYTE_TOKENS: tuple[str, ...] = tuple(f"<0x{b:02X}>" for b in range(256))  # ids 5..260
SPACE_SYMBOL = "▁"
DEFAULT_BASE_VOCAB_SIZE = 512

# SigLIP normalisation used by PaliGemma: x / 255 * 2 - 1.
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class TinyVariant:
    """Sizes of one tiny PaliGemma variant (text = Gemma decoder, vision = SigLIP encoder)."""

    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_head_dim: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    patch_size: int
    image_size: int
    embed_std: float  # std of the re-drawn token embedding (tied with the LM head)
    weight_std: float  # std of every other re-drawn weight matrix / conv kernel / position embedding

    @property
    def num_image_tokens(self) -> int:
        """Number of SigLIP patches = image tokens per camera image."""
        return (self.image_size // self.patch_size) ** 2


VARIANTS: dict[str, TinyVariant] = {
    # Grouped-query attention (2 query heads per KV head), head_dim = hidden / heads.
    "gqa": TinyVariant(
        text_hidden=64,
        text_intermediate=128,
        text_layers=2,
        text_heads=4,
        text_kv_heads=2,
        text_head_dim=16,
        vision_hidden=32,
        vision_intermediate=64,
        vision_layers=2,
        vision_heads=2,
        patch_size=8,
        image_size=32,
        embed_std=0.1,
        weight_std=0.3,
    ),
    # Multi-query attention with head_dim != hidden / heads (4 * 24 = 96 != 48), odd vision head count.
    "odd_head_dim": TinyVariant(
        text_hidden=48,
        text_intermediate=96,
        text_layers=3,
        text_heads=4,
        text_kv_heads=1,
        text_head_dim=24,
        vision_hidden=24,
        vision_intermediate=48,
        vision_layers=1,
        vision_heads=3,
        patch_size=16,
        image_size=48,
        embed_std=0.1,
        weight_std=0.3,
    ),
    # Larger variant for demos; multi-query attention like PaliGemma-3B's Gemma (8 heads, 1 KV head).
    "small": TinyVariant(
        text_hidden=256,
        text_intermediate=1024,
        text_layers=4,
        text_heads=4,
        text_kv_heads=1,
        text_head_dim=64,
        vision_hidden=128,
        vision_intermediate=512,
        vision_layers=2,
        vision_heads=4,
        patch_size=16,
        image_size=112,
        embed_std=0.05,
        weight_std=0.2,
    ),
}


# ----------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------

_VERBS = ("pick up", "put", "place", "move", "push", "open", "close", "grasp", "lift", "stack", "turn", "wipe")
_COLORS = ("red", "green", "blue", "yellow", "black", "white", "orange", "purple")
_OBJECTS = ("block", "cup", "bowl", "sponge", "can", "drawer", "spoon", "towel", "apple", "bottle", "lid", "cube")
_PLACES = (
    "on the table",
    "in the bowl",
    "into the drawer",
    "on top of the plate",
    "to the left",
    "to the right",
    "next to the sink",
    "in the basket",
    "near the microwave",
    "onto the shelf",
)
_EXTRA_SENTENCES = (
    "What should the robot do to complete the task?",
    "The gripper is open and the arm is above the table.",
    "Rotate the knob 90 degrees clockwise, then release it.",
    "Fold the cloth in half (carefully) and put it away.",
    "Step 1: locate the object; step 2: grasp it; step 3: lift it 10 cm.",
    "Is the door open or closed? Answer yes or no.",
    "Sort the 3 cubes by color: red, green & blue.",
    "caption en\n",
    "answer en where is the cup?\n",
    "detect apple ; bowl\n",
    '"Hello" - said the robot. It\'s 5:30 pm, #42 @home [ok] {done} 100% ~fine_tuned* +1 = 2 / 2 | x^2 < y > z `code`',
)


def tiny_tokenizer_corpus() -> list[str]:
    """A deterministic English corpus of robot-instruction-like sentences used to train the tiny BPE."""
    sentences = [
        f"{verb} the {color} {obj} {place}"
        for verb, color, obj, place in itertools.product(_VERBS, _COLORS, _OBJECTS, _PLACES)
    ]
    capitalised = [s[0].upper() + s[1:] + "." for s in sentences[::7]]
    return sentences + capitalised + list(_EXTRA_SENTENCES)


def _train_bpe(corpus: list[str], num_learned: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Train a BPE on ``corpus`` with Gemma's normalisation; return (learned pieces in id order, merges).

    Merges are learned inside words only ("▁" starts a word, "\\n" is its own word), so the tokenizer, which
    applies them to the un-split string like Gemma's, never merges across a space or a newline.
    """
    alphabet = [SPACE_SYMBOL if chr(c) == " " else chr(c) for c in range(32, 127)] + ["\n"]
    trainer_tokenizer = Tokenizer(BPE(unk_token=UNK_TOKEN))
    trainer_tokenizer.normalizer = normalizers.Replace(" ", SPACE_SYMBOL)
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(SPACE_SYMBOL, behavior="merged_with_next"),
            pre_tokenizers.Split("\n", behavior="isolated"),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=num_learned,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        special_tokens=[],
    )
    trainer_tokenizer.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(trainer_tokenizer.to_str())["model"]
    pieces = [piece for piece, _ in sorted(model["vocab"].items(), key=lambda item: item[1])]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return pieces, merges


def build_tiny_tokenizer(base_vocab_size: int = DEFAULT_BASE_VOCAB_SIZE) -> GemmaTokenizer:
    """Build the tiny Gemma-style fast tokenizer described in the module docstring.

    Args:
        base_vocab_size: ids below this are the BPE vocabulary (specials, bytes, learned pieces); the
            location, segmentation and ``<image>`` tokens follow. Must leave room for at least the
            printable-ASCII alphabet (>= 358).

    Returns:
        A ``GemmaTokenizer`` with ``add_bos_token=True`` and ``len(tokenizer) == base_vocab_size + 1153``.
    """
    num_fixed = len(SPECIAL_TOKENS) + len(BYTE_TOKENS)
    pieces, merges = _train_bpe(tiny_tokenizer_corpus(), base_vocab_size - num_fixed)
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + BYTE_TOKENS)}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    if len(vocab) > base_vocab_size:
        raise ValueError(f"base_vocab_size={base_vocab_size} is too small for the {len(vocab)} base tokens")
    # Pad with unused pieces (unreachable by merges) so that the location tokens start at base_vocab_size.
    while len(vocab) < base_vocab_size:
        vocab[f"<unused{len(vocab) - num_fixed - len(pieces)}>"] = len(vocab)
    # As in PaliGemma's SentencePiece model, <locXXXX>/<segXXX> are ordinary vocabulary entries; they are
    # registered as added tokens below so that they are matched as a whole in text.
    for token in LOCATION_TOKENS + SEGMENTATION_TOKENS:
        vocab[token] = len(vocab)

    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        unk_token=UNK_TOKEN,
        mask_token=MASK_TOKEN,
        add_bos_token=True,
        add_eos_token=False,
        padding_side="right",
        model_max_length=2048,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    # <image> (named extra special token) was appended above, at base_vocab_size + 1152.
    tokenizer.add_tokens(
        [AddedToken(t, normalized=False, special=False) for t in LOCATION_TOKENS + SEGMENTATION_TOKENS]
    )
    _check_tokenizer_layout(tokenizer, base_vocab_size)
    return tokenizer


def _check_tokenizer_layout(tokenizer: GemmaTokenizer, base_vocab_size: int) -> None:
    """Raise if the id layout differs from the documented one."""
    expected = {
        PAD_TOKEN: 0,
        EOS_TOKEN: 1,
        BOS_TOKEN: 2,
        UNK_TOKEN: 3,
        LOCATION_TOKENS[0]: base_vocab_size,
        SEGMENTATION_TOKENS[0]: base_vocab_size + len(LOCATION_TOKENS),
        IMAGE_TOKEN: base_vocab_size + len(LOCATION_TOKENS) + len(SEGMENTATION_TOKENS),
    }
    actual = {token: tokenizer.convert_tokens_to_ids(token) for token in expected}
    if actual != expected or len(tokenizer) != expected[IMAGE_TOKEN] + 1:
        raise RuntimeError(f"unexpected tiny tokenizer layout: {actual} (len {len(tokenizer)})")


# ----------------------------------------------------------------------------------------------------------
# Config, model, processor
# ----------------------------------------------------------------------------------------------------------


def build_tiny_config(variant: str, tokenizer: GemmaTokenizer) -> PaliGemmaConfig:
    """PaliGemmaConfig of ``variant`` with PaliGemma's activations/eps and the tokenizer's vocabulary."""
    spec = _get_variant(variant)
    vocab_size = len(tokenizer)
    vision_config = {
        "model_type": "siglip_vision_model",
        "hidden_size": spec.vision_hidden,
        "intermediate_size": spec.vision_intermediate,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
        "num_channels": 3,
        "patch_size": spec.patch_size,
        "image_size": spec.image_size,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vision_use_head": False,
    }
    text_config = {
        "model_type": "gemma",
        "vocab_size": vocab_size,
        "hidden_size": spec.text_hidden,
        "intermediate_size": spec.text_intermediate,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": spec.text_heads,
        "num_key_value_heads": spec.text_kv_heads,
        "head_dim": spec.text_head_dim,
        "hidden_act": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "max_position_embeddings": 8192,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    config = PaliGemmaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vocab_size=vocab_size,
        projection_dim=spec.text_hidden,
        hidden_size=spec.text_hidden,
        tie_word_embeddings=True,
    )
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    return config


@torch.no_grad()
def build_tiny_model(
    config: PaliGemmaConfig, seed: int, embed_std: float, weight_std: float
) -> PaliGemmaForConditionalGeneration:
    """Random float32 PaliGemma whose greedy generations are not one repeated token.

    transformers' default init (std 0.02 everywhere) makes the residual stream of such a shallow model
    nearly equal to the input token's embedding, so the tied head predicts the input token again and greedy
    decoding repeats it. Re-drawing the token embedding from N(0, embed_std) and all other weights with
    ndim >= 2 (linear matrices, patch-embedding kernel, SigLIP position embedding) from N(0, weight_std)
    gives varied outputs. Norm weights and biases keep transformers' defaults.
    """
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config).to(torch.float32)
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():  # the tied lm_head appears once, as embed_tokens
        if param.ndim >= 2:
            std = embed_std if name.endswith("embed_tokens.weight") else weight_std
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    model.eval()
    return model


def build_tiny_processor(tokenizer: GemmaTokenizer, config: PaliGemmaConfig) -> PaliGemmaProcessor:
    """PaliGemmaProcessor around ``tokenizer`` and a SigLIP image processor sized for ``config``.

    Note that ``PaliGemmaProcessor`` switches the wrapped tokenizer to ``add_bos_token=False`` (it writes
    ``<bos>`` into the prompt itself), so pass a tokenizer that may be modified.
    """
    image_size = config.vision_config.image_size
    image_processor = _siglip_image_processor_class()(
        size={"height": image_size, "width": image_size},
        resample=3,  # PIL bicubic, as in the hub checkpoint
        do_resize=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        do_convert_rgb=None,
        image_seq_length=config.text_config.num_image_tokens,
    )
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _siglip_image_processor_class() -> type:
    """``SiglipImageProcessor`` needs torchvision; without it use its PIL twin (same saved config)."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import SiglipImageProcessor

        return SiglipImageProcessor
    from transformers import SiglipImageProcessorPil

    return SiglipImageProcessorPil


def _get_variant(variant: str) -> TinyVariant:
    """Look up a variant by name with a helpful error."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny PaliGemma variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant]


# ----------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------

_NATIVE_VISION_PREFIX = "vision_tower."
_HUB_VISION_PREFIX = "vision_tower.vision_model."


def _to_hub_key(key: str) -> str:
    """``vision_tower.X`` -> ``vision_tower.vision_model.X``; other keys unchanged."""
    if key.startswith(_NATIVE_VISION_PREFIX) and not key.startswith(_HUB_VISION_PREFIX):
        return _HUB_VISION_PREFIX + key[len(_NATIVE_VISION_PREFIX) :]
    return key


def rewrite_to_hub_layout(folder: Path) -> None:
    """Rename the SigLIP keys of the safetensors files (and index) in ``folder`` to the hub layout."""
    index_path = folder / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
        shard_names = sorted(set(index["weight_map"].values()))
        index["weight_map"] = {_to_hub_key(k): v for k, v in sorted(index["weight_map"].items())}
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    else:
        shard_names = ["model.safetensors"]
    for shard_name in shard_names:
        shard_path = folder / shard_name
        tensors = load_file(shard_path)
        save_file({_to_hub_key(k): v for k, v in tensors.items()}, shard_path, metadata={"format": "pt"})


def make_tiny_paligemma_checkpoint(
    output_dir: str | Path,
    variant: str = "gqa",
    seed: int = 0,
    max_shard_size: str | None = None,
    *,
    hub_layout: bool = True,
) -> Path:
    """Write a random tiny PaliGemma folder (config, weights, tokenizer, processor) to ``output_dir``.

    Args:
        output_dir: folder to create (or overwrite files in).
        variant: one of ``VARIANTS`` ("gqa", "odd_head_dim", "small").
        seed: seed of the weight initialisation (the tokenizer is always the same).
        max_shard_size: passed to ``save_pretrained``, e.g. "200KB" for a sharded checkpoint with
            ``model.safetensors.index.json``; None keeps transformers' default (one file for these sizes).
        hub_layout: rename the vision keys to the hub's ``vision_tower.vision_model.*`` (see module docstring).

    Returns:
        The folder path. ``AutoTokenizer``, ``PaliGemmaProcessor`` and ``PaliGemmaForConditionalGeneration``
        ``.from_pretrained(folder)`` all load from it offline.
    """
    spec = _get_variant(variant)
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tiny_tokenizer()
    config = build_tiny_config(variant, tokenizer)
    model = build_tiny_model(config, seed=seed, embed_std=spec.embed_std, weight_std=spec.weight_std)
    save_kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(folder, **save_kwargs)
    if hub_layout:
        rewrite_to_hub_layout(folder)

    # The processor flips its tokenizer to add_bos_token=False, so give it a separate instance and save
    # the bos-adding tokenizer last (the processor writes tokenizer files too).
    build_tiny_processor(build_tiny_tokenizer(), config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: write a tiny checkpoint and print its folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--output_dir", required=True, help="folder to write the checkpoint to")
    parser.add_argument("--variant", default="gqa", choices=sorted(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_shard_size", default=None, help='e.g. "200KB" to write a sharded checkpoint')
    parser.add_argument("--native_layout", action="store_true", help="keep save_pretrained's vision_tower.* keys")
    args = parser.parse_args(argv)
    folder = make_tiny_paligemma_checkpoint(
        args.output_dir, args.variant, args.seed, args.max_shard_size, hub_layout=not args.native_layout
    )
    print(folder)


if __name__ == "__main__":
    main()
