"""VLAProcessor and the tiny PaliGemma checkpoints, checked against transformers as the reference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, PaliGemmaForConditionalGeneration, PaliGemmaProcessor

from pg_vla.model.paligemma.processing import VLAProcessor
from pg_vla.model.paligemma.tiny_checkpoint import make_tiny_paligemma_checkpoint

PROMPTS = [
    "pick up the red block",
    "Put the sponge in the bowl.",
    "",
    "  open the drawer, then wipe the table  ",
    "wipe the café table 🤖",  # non-ASCII falls back to byte tokens
]
LONG_PROMPT = "move the purple bottle next to the sink and then place the green cube on top of the plate"
GREY_LEVEL = 2.0 / 255.0  # one 8-bit step in [-1, 1] units

# transformers' PaliGemmaProcessor builds its labels with a numpy call that warns under numpy 2.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def reference(tiny_checkpoint_dir: Path) -> PaliGemmaProcessor:
    return PaliGemmaProcessor.from_pretrained(tiny_checkpoint_dir)


@pytest.fixture(scope="module")
def processor(tiny_checkpoint_dir: Path) -> VLAProcessor:
    return VLAProcessor.from_pretrained(tiny_checkpoint_dir, max_text_tokens=24)


def reference_text_ids(reference: PaliGemmaProcessor, prompt: str) -> list[int]:
    """Ids after the image tokens in transformers' PaliGemma prompt ("<image>"*N + "<bos>" + prompt + "\\n")."""
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    ids = reference(text=["<image>" + prompt], images=[image])["input_ids"][0]
    ids = list(ids)
    assert ids[: reference.image_seq_length] == [reference.image_token_id] * reference.image_seq_length
    return ids[reference.image_seq_length :]


def reference_pixels(reference: PaliGemmaProcessor, images: list[np.ndarray]) -> torch.Tensor:
    """transformers' pixel_values (M, 3, S, S) of a list of (H, W, 3) uint8 images."""
    return reference(text=["<image>"] * len(images), images=images, return_tensors="pt")["pixel_values"]


def random_images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def smooth_image(height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 image without high frequencies, where resize filters agree closely."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [np.sin(xx / 9.0) * np.cos(yy / 7.0), np.cos((xx + yy) / 13.0), np.sin(yy / 11.0)]
    return np.stack([128 + 100 * c for c in channels], axis=-1).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Checkpoint folder
# ----------------------------------------------------------------------------------------------------------


def test_checkpoint_loads_with_transformers(tiny_checkpoint_dir: Path) -> None:
    model = PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint_dir)
    config = model.config
    assert config.text_config.vocab_size == len(tokenizer) == 1665
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<image>") == 1664
    assert config.text_config.num_image_tokens == (32 // 8) ** 2 == 16
    assert (config.text_config.hidden_size, config.text_config.num_key_value_heads, config.text_config.head_dim) == (
        64,
        2,
        16,
    )
    assert config.vision_config.hidden_act == config.text_config.hidden_act == "gelu_pytorch_tanh"
    assert config.vision_config.vision_use_head is False
    assert config.text_config.rope_parameters["rope_theta"] == 10000.0

    # Every loaded parameter equals the tensor stored under the hub name (read independently of transformers).
    stored = load_file(tiny_checkpoint_dir / "model.safetensors")
    assert "lm_head.weight" not in stored
    assert {key.split(".")[0] for key in stored} == {"language_model", "vision_tower", "multi_modal_projector"}
    assert all(key.startswith("vision_tower.vision_model.") for key in stored if key.startswith("vision_tower"))
    for name, param in model.state_dict().items():
        if name == "lm_head.weight":
            torch.testing.assert_close(param, stored["language_model.model.embed_tokens.weight"], rtol=0, atol=0)
            continue
        disk_name = (
            name.replace("model.language_model.", "language_model.model.")
            .replace("model.vision_tower.", "vision_tower.vision_model.")
            .replace("model.multi_modal_projector.", "multi_modal_projector.")
        )
        torch.testing.assert_close(param, stored[disk_name], rtol=0, atol=0, msg=name)


def test_odd_head_dim_variant(tiny_checkpoint_dir_odd: Path) -> None:
    config = json.loads((tiny_checkpoint_dir_odd / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    assert (text["hidden_size"], text["num_attention_heads"], text["num_key_value_heads"], text["head_dim"]) == (
        48,
        4,
        1,
        24,
    )
    assert (vision["hidden_size"], vision["num_attention_heads"], vision["patch_size"], vision["image_size"]) == (
        24,
        3,
        16,
        48,
    )
    assert text["num_image_tokens"] == 9
    assert PaliGemmaProcessor.from_pretrained(tiny_checkpoint_dir_odd).image_seq_length == 9


def test_sharded_save_writes_index_and_loads(tmp_path: Path, tiny_checkpoint_dir: Path) -> None:
    folder = make_tiny_paligemma_checkpoint(tmp_path / "sharded", variant="gqa", seed=0, max_shard_size="100KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    on_disk = {key: shard for shard in shards for key in load_file(folder / shard)}
    assert on_disk == index["weight_map"]
    assert on_disk.keys() == load_file(tiny_checkpoint_dir / "model.safetensors").keys()
    sharded = PaliGemmaForConditionalGeneration.from_pretrained(folder).state_dict()
    single = PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint_dir).state_dict()
    for name, value in single.items():
        torch.testing.assert_close(sharded[name], value, rtol=0, atol=0)


def test_tokenizer_conventions(tiny_checkpoint_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint_dir)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ("<pad>", "<eos>", "<bos>", "<unk>")}
    assert ids == {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)
    text = "Pick up the cup!\nThen: put it (carefully) on the shelf, 3 cm left — ok? ✓"
    encoded = tokenizer(text)["input_ids"]
    assert encoded[0] == 2 and 1 not in encoded  # <bos> added in front, no <eos>
    assert 3 not in encoded  # byte fallback: no <unk>
    assert tokenizer.decode(encoded, skip_special_tokens=True) == text
    assert len(tokenizer.encode("\n", add_special_tokens=False)) == 1
    assert tokenizer.convert_tokens_to_ids("<loc0000>") == 512
    assert tokenizer.encode("<loc0007><seg003>", add_special_tokens=False) == [512 + 7, 512 + 1024 + 3]


def test_greedy_generation_is_not_one_repeated_token(tiny_checkpoint_dir: Path, reference) -> None:
    model = PaliGemmaForConditionalGeneration.from_pretrained(tiny_checkpoint_dir).eval()
    inputs = reference(text=["<image>pick up the red block"], images=[random_images((32, 32, 3))], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"],
            max_new_tokens=20,
            do_sample=False,
        )
    new_tokens = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert len(new_tokens) == 20
    assert len(set(new_tokens)) >= 5


# ----------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------


def test_tokenize_matches_paligemma_processor(processor: VLAProcessor, reference) -> None:
    batch = processor.tokenize(PROMPTS)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (len(PROMPTS), 24)
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.bool
    for row, prompt in enumerate(PROMPTS):
        expected = reference_text_ids(reference, prompt)
        length = len(expected)
        assert length <= 24, prompt
        assert batch["input_ids"][row, :length].tolist() == expected
        assert batch["input_ids"][row, length:].tolist() == [0] * (24 - length)  # pad id 0
        assert batch["attention_mask"][row].tolist() == [True] * length + [False] * (24 - length)
        assert processor.generation_prompt_ids(prompt).tolist() == [expected]


def test_tokenize_hand_checked_lengths(processor: VLAProcessor) -> None:
    batch = processor.tokenize(["", "pick up the red block"])
    # "" -> <bos> "\n"; "pick up the red block" -> <bos> pick ▁up ▁the ▁red ▁block "\n"
    assert batch["attention_mask"].sum(dim=1).tolist() == [2, 7]
    assert batch["input_ids"][0, :2].tolist() == [2, processor.tokenizer.convert_tokens_to_ids("\n")]
    assert processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][1, :7].tolist()) == [
        "<bos>",
        "pick",
        "▁up",
        "▁the",
        "▁red",
        "▁block",
        "\n",
    ]


def test_truncation_keeps_bos_and_newline(tiny_checkpoint_dir: Path, reference) -> None:
    processor = VLAProcessor.from_pretrained(tiny_checkpoint_dir, max_text_tokens=8)
    full = reference_text_ids(reference, LONG_PROMPT)
    assert len(full) > 8
    batch = processor.tokenize([LONG_PROMPT, "pick up the red block"])
    # documented: <bos>, the first 8 - 2 prompt tokens, then the newline token
    assert batch["input_ids"][0].tolist() == full[:1] + full[1:-1][:6] + full[-1:]
    assert batch["attention_mask"][0].all()
    assert batch["attention_mask"][1].tolist() == [True] * 7 + [False]
    # generation prompts are never truncated
    assert processor.generation_prompt_ids(LONG_PROMPT).tolist() == [full]


def test_decode_stops_at_eos_and_skips_special_tokens(processor: VLAProcessor) -> None:
    tokenizer = processor.tokenizer
    body = tokenizer.encode("put the lid on the can", add_special_tokens=False)
    junk = tokenizer.encode("garbage", add_special_tokens=False)
    assert processor.decode([2, *body, 1, *junk]) == "put the lid on the can"
    assert processor.decode(torch.tensor([[2, *body]])) == "put the lid on the can"


def test_bad_text_arguments(tiny_checkpoint_dir: Path, processor: VLAProcessor) -> None:
    with pytest.raises(ValueError, match="max_text_tokens"):
        VLAProcessor.from_pretrained(tiny_checkpoint_dir, max_text_tokens=1)
    with pytest.raises(TypeError, match="single str"):
        processor.tokenize("pick up the cup")
    with pytest.raises(TypeError, match="str"):
        processor.tokenize([3])


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def test_from_pretrained_reads_image_size_and_names_missing_folders(tmp_path: Path, tiny_checkpoint_dir: Path) -> None:
    assert VLAProcessor.from_pretrained(tiny_checkpoint_dir, max_text_tokens=8).image_size == 32
    assert VLAProcessor.from_pretrained(tiny_checkpoint_dir, max_text_tokens=8, image_size=64).image_size == 64

    # Without the processor config the size comes from config.json's vision_config.
    no_processor = tmp_path / "no_processor"
    no_processor.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_checkpoint_dir / name, no_processor / name)
    assert VLAProcessor.from_pretrained(no_processor, max_text_tokens=8).image_size == 32

    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        VLAProcessor.from_pretrained(missing, max_text_tokens=8)
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    shutil.copy(tiny_checkpoint_dir / "config.json", no_tokenizer / "config.json")
    with pytest.raises(FileNotFoundError, match="no_tokenizer.*tokenizer files"):
        VLAProcessor.from_pretrained(no_tokenizer, max_text_tokens=8)


# ----------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------


def test_images_at_model_size_equal_transformers(processor: VLAProcessor, reference) -> None:
    images = random_images((2, 3, 32, 32, 3))  # (B, N_cam, H, W, 3)
    pixels = processor.preprocess_images(images)
    assert pixels.shape == (2, 3, 3, 32, 32) and pixels.dtype == torch.float32
    expected = reference_pixels(reference, list(images.reshape(6, 32, 32, 3)))  # (6, 3, S, S)
    torch.testing.assert_close(pixels.reshape(6, 3, 32, 32), expected, rtol=0, atol=1e-6)
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0


def test_resized_images_close_to_transformers(processor: VLAProcessor, reference) -> None:
    downsized = smooth_image(75, 100)  # non-square, aspect ratio not kept
    torch.testing.assert_close(
        processor.preprocess_images(downsized)[0, 0],
        reference_pixels(reference, [downsized])[0],
        rtol=0,
        atol=2 * GREY_LEVEL,
    )
    upsized = random_images((20, 20, 3))
    difference = (processor.preprocess_images(upsized)[0, 0] - reference_pixels(reference, [upsized])[0]).abs()
    assert difference.mean() < GREY_LEVEL
    assert difference.max() < 20 * GREY_LEVEL


def test_image_layouts_agree(processor: VLAProcessor) -> None:
    channel_last = random_images((2, 2, 40, 36, 3), seed=1)  # (B, N_cam, H, W, 3)
    expected = processor.preprocess_images(channel_last)
    assert expected.shape == (2, 2, 3, 32, 32)
    channel_first_torch = torch.from_numpy(channel_last).permute(0, 1, 4, 2, 3).contiguous()  # (B, N, 3, H, W)
    torch.testing.assert_close(processor.preprocess_images(channel_first_torch), expected, rtol=0, atol=0)
    torch.testing.assert_close(processor.preprocess_images(channel_first_torch.numpy()), expected, rtol=0, atol=0)
    torch.testing.assert_close(processor.preprocess_images(torch.from_numpy(channel_last)), expected, rtol=0, atol=0)
    torch.testing.assert_close(processor.preprocess_images(channel_last[:, 0]), expected[:, :1], rtol=0, atol=0)
    torch.testing.assert_close(processor.preprocess_images(channel_last[1, 1]), expected[1:, 1:], rtol=0, atol=0)


def test_call_returns_text_and_pixels(processor: VLAProcessor, reference) -> None:
    images = random_images((2, 32, 32, 3), seed=2)
    batch = processor(PROMPTS[:2], images)
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
    assert batch["pixel_values"].shape == (2, 1, 3, 32, 32)
    assert batch["input_ids"][1, : batch["attention_mask"][1].sum()].tolist() == reference_text_ids(
        reference, PROMPTS[1]
    )
    with pytest.raises(ValueError, match="3 prompts but 2 image samples"):
        processor(PROMPTS[:3], images)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((32, 32, 3), dtype=np.float32), "dtype uint8.*float32"),
        (torch.rand(1, 32, 32, 3), "dtype uint8.*float32"),
        (torch.zeros(1, 32, 32, 3, dtype=torch.int64), "dtype uint8.*int64"),
        (np.zeros((32, 32), dtype=np.uint8), "rank 2"),
        (np.zeros((1, 1, 1, 32, 32, 3), dtype=np.uint8), "rank 6"),
        (np.zeros((32, 32, 4), dtype=np.uint8), "3 \\(RGB\\) channels.*4 channels"),
        (np.zeros((2, 32, 32, 1), dtype=np.uint8), "3 \\(RGB\\) channels.*1 channels"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "channel-first layout is accepted only as rank-5"),
        (torch.zeros(2, 1, 3, 3, 3, dtype=torch.uint8), "ambiguous"),
        (np.zeros((0, 32, 32, 3), dtype=np.uint8), "empty dimension"),
    ],
)
def test_bad_images_are_rejected(processor: VLAProcessor, images, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        processor.preprocess_images(images)


def test_too_many_cameras_and_non_arrays_are_rejected(tiny_checkpoint_dir: Path, processor: VLAProcessor) -> None:
    limited = VLAProcessor.from_pretrained(tiny_checkpoint_dir, max_text_tokens=8, max_cameras=2)
    assert limited.preprocess_images(random_images((1, 2, 32, 32, 3))).shape == (1, 2, 3, 32, 32)
    with pytest.raises(ValueError, match="3 cameras.*max_cameras=2"):
        limited.preprocess_images(random_images((1, 3, 32, 32, 3)))
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        processor.preprocess_images([random_images((32, 32, 3))])
