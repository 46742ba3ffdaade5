"""Model-based rewards (aesthetic, pickscore, hpsv2) on tiny random-weight models saved in the real on-disk formats,
checked against an independent computation: the libraries' own PIL preprocessing and hand-written scoring math."""

import gzip
import json
import math

import numpy as np
import pytest
import torch
from numerics import assert_close_scaled
from PIL import Image
from tiny_models import TINY_CLIP_CONFIG, save_tiny_open_clip

from rlhf_img.rewards import RewardConfigError, build_rewards, score_rewards

TINY_CLIP_NAME = "rlhf-img-test-tiny-clip"  # registered with open_clip for the name + weights-file paths
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPTS = ["a red cube", "two dogs on a beach", "a watercolor of a fox", "a blue sphere left of a cat"]


def quantised_images(height: int, width: int, seed: int) -> torch.Tensor:
    """`(4, 3, H, W)` on the uint8 grid, so that a PIL round trip of the images is exact."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (4, 3, height, width), generator=generator).float() / 255


def pil_images(images: torch.Tensor) -> list[Image.Image]:
    arrays = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(np.ascontiguousarray(array), mode="RGB") for array in arrays]


def scores_of(entry: dict, images: torch.Tensor, prompts=PROMPTS) -> torch.Tensor:
    rewards = build_rewards([entry])
    return score_rewards(rewards, list(prompts), images, {})[:, 0]


# ---------------------------------------------------------------- tiny models in their released formats


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """A random open_clip model: an open_clip `local-dir:` folder (open_clip_config.json +
    open_clip_model.safetensors, tests/tiny_models.py), its weights file, and the same architecture
    registered by name for the name + weights-file paths."""
    import open_clip
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("open_clip")
    (root / "configs").mkdir()
    (root / "configs" / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(root / "configs" / f"{TINY_CLIP_NAME}.json")
    local_dir = save_tiny_open_clip(str(root / "local"), seed=0)
    weights = str(root / "local" / "open_clip_model.safetensors")
    return {"state_dict": load_file(weights), "local_dir": local_dir, "weights": weights}


def reference_open_clip(tiny_open_clip):
    """The model with open_clip's own PIL transform (Resize bicubic, CenterCrop, ToTensor, Normalize)."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_open_clip['local_dir']}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{tiny_open_clip['local_dir']}")


@pytest.fixture(scope="module")
def aesthetic_head(tmp_path_factory) -> dict:
    """An aesthetic head with the released file's key names (`layers.{0,2,4,6,7}`) and a 32-d input."""
    generator = torch.Generator().manual_seed(1)
    widths = [32, 1024, 128, 64, 16, 1]
    state_dict = {}
    for index, (fan_in, fan_out) in zip([0, 2, 4, 6, 7], zip(widths, widths[1:])):
        state_dict[f"layers.{index}.weight"] = torch.randn(fan_out, fan_in, generator=generator) / math.sqrt(fan_in)
        state_dict[f"layers.{index}.bias"] = torch.randn(fan_out, generator=generator) * 0.1
    path = tmp_path_factory.mktemp("aesthetic") / "tiny-linearMSE.pth"
    torch.save(state_dict, path)
    return {"path": str(path), "state_dict": state_dict}


def clip_tokenizer():
    """A real CLIP BPE tokenizer for transformers, built offline from the vocabulary open_clip ships."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    characters = list(bytes_to_unicode().values())
    tokens = characters + [c + "</w>" for c in characters] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: index for index, token in enumerate(tokens)}, merges=merges)


@pytest.fixture(scope="module")
def tiny_pickscore(tmp_path_factory) -> str:
    """A random transformers `CLIPModel` with its tokenizer and image-processor config in one folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("pickscore") / "tiny-pickscore"
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
        logit_scale_init_value=math.log(100.0),  # PickScore's trained temperature is ~100
    )
    torch.manual_seed(2)
    CLIPModel(config).save_pretrained(folder)
    clip_tokenizer().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


# ---------------------------------------------------------------- clip_score


def reference_clip_cosine(tiny_open_clip, images, captions) -> torch.Tensor:
    model, preprocess, tokenizer = reference_open_clip(tiny_open_clip)
    with torch.no_grad():
        pixels = torch.stack([preprocess(image) for image in pil_images(images)])
        image_features = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        text_features = torch.nn.functional.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    return (image_features * text_features).sum(-1)


@pytest.mark.parametrize("clip_source", ["local-dir", "name+weights-file", "local-dir-as-pretrained"])
def test_clip_score_cosine_matches_open_clip_pil_pipeline(tiny_open_clip, clip_source):
    if clip_source == "local-dir":
        kwargs = {"model": f"local-dir:{tiny_open_clip['local_dir']}", "pretrained": None}
    elif clip_source == "name+weights-file":
        kwargs = {"model": TINY_CLIP_NAME, "pretrained": tiny_open_clip["weights"]}
    else:
        kwargs = {"model": "ViT-H-14", "pretrained": f"local-dir:{tiny_open_clip['local_dir']}"}
    images = quantised_images(32, 32, seed=5)
    entry = {"name": "clip_score", "kwargs": {"device": "cpu", "caption_template": "A photo of {prompt}", **kwargs}}
    scores = scores_of(entry, images)
    expected = reference_clip_cosine(tiny_open_clip, images, [f"A photo of {p}" for p in PROMPTS])
    assert expected.std() > 1e-3
    assert_close_scaled(scores, expected, relative=1e-4)


def test_clip_score_formulas_and_resized_inputs(tiny_open_clip):
    images = quantised_images(48, 40, seed=6)  # resized on the tensor vs by PIL: close, not identical
    base = {"model": f"local-dir:{tiny_open_clip['local_dir']}", "device": "cpu", "caption_template": "{prompt}"}
    cosine = scores_of({"name": "clip_score", "kwargs": base}, images)
    expected = reference_clip_cosine(tiny_open_clip, images, PROMPTS)
    torch.testing.assert_close(cosine, expected, rtol=0, atol=0.1 * expected.std().item())
    hundred = scores_of({"name": "clip_score", "kwargs": {**base, "formula": "100cos"}}, images)
    clipscore = scores_of({"name": "clip_score", "kwargs": {**base, "formula": "clipscore"}}, images)
    assert_close_scaled(hundred, 100 * cosine, relative=1e-6)
    assert_close_scaled(clipscore, 2.5 * cosine.clamp(min=0), relative=1e-6)


def test_clip_score_bad_kwargs_are_one_line_errors(tmp_path):
    with pytest.raises(RewardConfigError, match="formula"):
        build_rewards([{"name": "clip_score", "kwargs": {"formula": "cos2"}}])
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        build_rewards(
            [
                {
                    "name": "clip_score",
                    "kwargs": {"model": "ViT-B-32", "pretrained": str(tmp_path / "nowhere.safetensors")},
                }
            ]
        )
    with pytest.raises(FileNotFoundError, match="local-dir not found"):
        build_rewards([{"name": "clip_score", "kwargs": {"model": f"local-dir:{tmp_path / 'nothing'}"}}])


# ---------------------------------------------------------------- aesthetic


def reference_aesthetic(tiny_open_clip, head_state_dict, images) -> torch.Tensor:
    model, preprocess, _ = reference_open_clip(tiny_open_clip)
    with torch.no_grad():
        pixels = torch.stack([preprocess(image) for image in pil_images(images)])
        x = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        for index in [0, 2, 4, 6, 7]:  # Dropout is the identity at inference and there is no activation
            x = x @ head_state_dict[f"layers.{index}.weight"].T + head_state_dict[f"layers.{index}.bias"]
    return x[:, 0]


@pytest.mark.parametrize("clip_source", ["local-dir", "name+weights-file"])
def test_aesthetic_matches_open_clip_preprocessing_and_the_laion_mlp(tiny_open_clip, aesthetic_head, clip_source):
    if clip_source == "local-dir":
        clip_kwargs = {"clip_model": f"local-dir:{tiny_open_clip['local_dir']}"}
    else:
        clip_kwargs = {"clip_model": TINY_CLIP_NAME, "clip_pretrained": tiny_open_clip["weights"]}
    images = quantised_images(32, 32, seed=3)  # the model's input size: no resize on either side
    entry = {"name": "aesthetic", "kwargs": {"weights": aesthetic_head["path"], "device": "cpu", **clip_kwargs}}
    scores = scores_of(entry, images)
    expected = reference_aesthetic(tiny_open_clip, aesthetic_head["state_dict"], images)
    assert expected.std() > 1e-2  # the images are told apart, so agreement means something
    assert_close_scaled(scores, expected, relative=1e-4)


def test_aesthetic_from_safetensors_at_another_image_size(tiny_open_clip, aesthetic_head, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "head.safetensors"
    save_file(aesthetic_head["state_dict"], str(path))
    images = quantised_images(48, 40, seed=4)  # resized and cropped: PIL (uint8) against antialiased torch bicubic
    entry = {
        "name": "aesthetic",
        "kwargs": {
            "weights": str(path),
            "clip_model": f"local-dir:{tiny_open_clip['local_dir']}",
            "device": "cpu",
            "batch_size": 3,
        },
    }
    scores = scores_of(entry, images)
    expected = reference_aesthetic(tiny_open_clip, aesthetic_head["state_dict"], images)
    torch.testing.assert_close(scores, expected, rtol=0, atol=0.1 * expected.std().item())


def test_aesthetic_missing_weights_is_a_one_line_error_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^reward 'aesthetic': weights file not found: .*nope\.pth$"):
        build_rewards([{"name": "aesthetic", "kwargs": {"weights": str(tmp_path / "nope.pth")}}])
    with pytest.raises(RewardConfigError, match="needs kwargs.weights.*sac\\+logos\\+ava1-l14-linearMSE.pth"):
        build_rewards(["aesthetic"])


def test_aesthetic_builds_openai_clip_with_quick_gelu_as_open_clip_records_for_the_tag():
    from rlhf_img.rewards.aesthetic import _tag_uses_quick_gelu

    assert _tag_uses_quick_gelu("ViT-L-14", "openai")  # the released head's CLIP
    assert not _tag_uses_quick_gelu("ViT-L-14", "laion2b_s32b_b82k")
    assert not _tag_uses_quick_gelu("ViT-L-14", "/weights/ViT-L-14.safetensors")  # a file: the config decides
    assert not _tag_uses_quick_gelu("local-dir:/models/clip", "openai")


def test_aesthetic_rejects_a_head_for_another_embedding_width(tiny_open_clip, tmp_path):
    state_dict = {"layers.0.weight": torch.zeros(1024, 768), "layers.0.bias": torch.zeros(1024)}
    for index, (fan_in, fan_out) in zip([2, 4, 6, 7], [(1024, 128), (128, 64), (64, 16), (16, 1)]):
        state_dict[f"layers.{index}.weight"], state_dict[f"layers.{index}.bias"] = (
            torch.zeros(fan_out, fan_in),
            torch.zeros(fan_out),
        )
    torch.save(state_dict, tmp_path / "l14.pth")
    kwargs = {
        "weights": str(tmp_path / "l14.pth"),
        "clip_model": f"local-dir:{tiny_open_clip['local_dir']}",
        "device": "cpu",
    }
    with pytest.raises(ValueError, match="expects 768-d embeddings but .* gives 32-d"):
        build_rewards([{"name": "aesthetic", "kwargs": kwargs}])


# ---------------------------------------------------------------- hpsv2


def reference_hpsv2(tiny_open_clip, images, prompts=PROMPTS) -> torch.Tensor:
    """HPSv2's evaluation transform (ToTensor, longest side to 32 with bicubic on the tensor, zero padding,
    Normalize) written with torchvision, then the diagonal of image_features @ text_features.T."""
    import torchvision.transforms.functional as TF

    model, _, tokenizer = reference_open_clip(tiny_open_clip)
    pixels = []
    for image in pil_images(images):
        tensor = TF.to_tensor(image)
        height, width = tensor.shape[1:]
        scale = 32 / max(height, width)
        if scale != 1.0:
            new_size = [round(height * scale), round(width * scale)]
            tensor = TF.resize(tensor, new_size, TF.InterpolationMode.BICUBIC, antialias=True)
            pad_h, pad_w = 32 - new_size[0], 32 - new_size[1]
            tensor = TF.pad(tensor, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
        pixels.append(TF.normalize(tensor, CLIP_MEAN, CLIP_STD))
    with torch.no_grad():
        image_features = model.encode_image(torch.stack(pixels), normalize=True)
        text_features = model.encode_text(tokenizer(list(prompts)), normalize=True)
    return torch.diagonal(image_features @ text_features.T)


@pytest.mark.parametrize("layout", ["hps-checkpoint-with-module-prefix", "bare-state-dict"])
def test_hpsv2_matches_its_letterbox_transform_and_cosine(tiny_open_clip, tmp_path, layout):
    state_dict = tiny_open_clip["state_dict"]
    if layout == "bare-state-dict":
        checkpoint = state_dict
    else:  # what HPS_v2(.1)_compressed.pt holds: {'state_dict': ...}; a DDP-wrapped save adds 'module.'
        checkpoint = {"state_dict": {f"module.{key}": value for key, value in state_dict.items()}}
    torch.save(checkpoint, tmp_path / "HPS_tiny_compressed.pt")
    entry = {
        "name": "hpsv2",
        "kwargs": {"weights": str(tmp_path / "HPS_tiny_compressed.pt"), "clip_model": TINY_CLIP_NAME, "device": "cpu"},
    }
    images = quantised_images(32, 32, seed=5)
    scores = scores_of(entry, images)
    expected = reference_hpsv2(tiny_open_clip, images)
    assert expected.std() > 1e-3
    assert_close_scaled(scores, expected, relative=1e-4)
    # the score pairs each image with its own prompt: swapping prompts changes it
    assert not torch.allclose(scores_of(entry, images, prompts=PROMPTS[::-1]), scores)


def test_hpsv2_letterboxes_non_square_images_like_hpsv2(tiny_open_clip, tmp_path):
    torch.save({"state_dict": tiny_open_clip["state_dict"]}, tmp_path / "hps.pt")
    entry = {
        "name": "hpsv2",
        "kwargs": {"weights": str(tmp_path / "hps.pt"), "clip_model": TINY_CLIP_NAME, "device": "cpu", "batch_size": 3},
    }
    images = quantised_images(48, 40, seed=6)  # -> 32 x 27, padded 2 left / 3 right
    scores = scores_of(entry, images)
    expected = reference_hpsv2(tiny_open_clip, images)
    assert_close_scaled(scores, expected, relative=1e-4)  # both resize the float tensor: tight


def test_hpsv2_missing_or_mismatched_weights_are_one_line_errors(tiny_open_clip, tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"^reward 'hpsv2': weights file not found: .*HPS_v2\.1_compressed\.pt$"
    ):
        build_rewards([{"name": "hpsv2", "kwargs": {"weights": str(tmp_path / "HPS_v2.1_compressed.pt")}}])
    with pytest.raises(RewardConfigError, match="needs kwargs.weights.*xswu/HPSv2"):
        build_rewards(["hpsv2"])
    partial = {key: value for key, value in tiny_open_clip["state_dict"].items() if not key.startswith("visual.")}
    torch.save({"state_dict": partial, "extra.weight": torch.zeros(1)}, tmp_path / "partial.pt")
    entry = {
        "name": "hpsv2",
        "kwargs": {"weights": str(tmp_path / "partial.pt"), "clip_model": TINY_CLIP_NAME, "device": "cpu"},
    }
    with pytest.raises(ValueError, match=r"does not fit open_clip '.*': \d+ missing keys \['visual\."):
        build_rewards([entry])


# ---------------------------------------------------------------- pickscore


def reference_pickscore(folder, images, prompts=PROMPTS, processor=None) -> torch.Tensor:
    """transformers' PIL image processor and tokenizer, and `CLIPModel.forward`'s logits_per_image diagonal
    (logit_scale.exp() * cos)."""
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

    processor = processor or folder
    model = CLIPModel.from_pretrained(folder).eval()
    pixel_values = CLIPImageProcessorPil.from_pretrained(processor)(pil_images(images), return_tensors="pt")[
        "pixel_values"
    ]
    tokens = AutoTokenizer.from_pretrained(processor)(
        list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt"
    )
    with torch.no_grad():
        output = model(pixel_values=pixel_values, **tokens)
    return torch.diagonal(output.logits_per_image)


def test_pickscore_matches_transformers_processor_and_clip_logits(tiny_pickscore):
    images = quantised_images(32, 32, seed=7)
    entry = {"name": "pickscore", "kwargs": {"model": tiny_pickscore, "processor": tiny_pickscore, "device": "cpu"}}
    scores = scores_of(entry, images)
    expected = reference_pickscore(tiny_pickscore, images)
    assert expected.std() > 1e-2
    assert_close_scaled(scores, expected, relative=1e-4)
    assert not torch.allclose(scores_of(entry, images, prompts=PROMPTS[::-1]), scores)


def test_pickscore_at_another_image_size(tiny_pickscore):
    images = quantised_images(48, 40, seed=8)
    entry = {
        "name": "pickscore",
        "kwargs": {"model": tiny_pickscore, "processor": tiny_pickscore, "device": "cpu", "batch_size": 3},
    }
    scores = scores_of(entry, images)
    expected = reference_pickscore(tiny_pickscore, images)
    torch.testing.assert_close(scores, expected, rtol=0, atol=0.1 * expected.std().item())


def test_pickscore_with_a_separate_processor_that_crops_inside_the_resize(tiny_pickscore, tmp_path):
    import shutil

    from transformers import CLIPImageProcessor

    processor = tmp_path / "processor"
    processor.mkdir()
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(f"{tiny_pickscore}/{name}", processor / name)
    CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}).save_pretrained(processor)
    images = quantised_images(48, 40, seed=9)  # shorter side already 40: only the 32 x 32 centre crop differs
    entry = {"name": "pickscore", "kwargs": {"model": tiny_pickscore, "processor": str(processor), "device": "cpu"}}
    scores = scores_of(entry, images)
    assert_close_scaled(scores, reference_pickscore(tiny_pickscore, images, processor=str(processor)), relative=1e-4)


def test_pickscore_missing_local_model_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^reward 'pickscore': model folder not found: .*nope$"):
        build_rewards([{"name": "pickscore", "kwargs": {"model": str(tmp_path / "nope")}}])


# ---------------------------------------------------------------- the image-embedding capability


@pytest.mark.parametrize("name", ["clip_score", "aesthetic", "hpsv2", "pickscore"])
def test_clip_based_rewards_expose_embed_images_reusing_the_scored_batch(
    name, tiny_open_clip, aesthetic_head, tiny_pickscore, tmp_path
):
    """What the diversity monitor reads (`RewardSet.image_embedder`): unit-norm `(B, D)` embeddings, those of the
    call that just scored this very tensor (no second model pass), and the same values for a copy of it."""
    from rlhf_img.rewards import RewardSet

    local = f"local-dir:{tiny_open_clip['local_dir']}"
    torch.save({"state_dict": tiny_open_clip["state_dict"]}, tmp_path / "hps.pt")
    kwargs = {
        "clip_score": {"model": local, "pretrained": None},
        "aesthetic": {"weights": aesthetic_head["path"], "clip_model": local},
        "hpsv2": {"weights": str(tmp_path / "hps.pt"), "clip_model": TINY_CLIP_NAME},
        "pickscore": {"model": tiny_pickscore, "processor": tiny_pickscore},
    }[name]
    rewards = RewardSet.build([{"name": name, "kwargs": {**kwargs, "device": "cpu", "batch_size": 3}}])
    embed_images = rewards.image_embedder()
    assert embed_images is not None
    images = quantised_images(40, 32, seed=11)
    rewards.score(PROMPTS, images, {})
    scored = embed_images(images)
    assert scored is embed_images(images)  # the scored batch's embeddings, not a second pass
    assert scored.shape == (len(PROMPTS), 32) and scored.dtype == torch.float32
    assert_close_scaled(scored.norm(dim=-1), torch.ones(len(PROMPTS)))
    assert_close_scaled(embed_images(images.clone()), scored)  # another tensor: embedded afresh, same values
