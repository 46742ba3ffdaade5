"""A tiny random LLaVA judge, built offline, for trying and testing `vlm_judge` / `vqa` against a real server.

    rlhf-img create-tiny-judge runs/tiny-judge
    transformers serve runs/tiny-judge --device cpu --port 8765      # pip install 'transformers[serving]'

It is an OpenAI-compatible VLM of the kind vLLM / SGLang serve (a CLIP vision tower, a Llama LM, a byte-level BPE
tokenizer and a ChatML template), ~170k random parameters: it judges nothing, but every request, image part and
answer goes over the real wire format. Its `lm_head` gives non-zero logits to the ten digit tokens only, so greedy
decoding (temperature 0) always answers with digits, which differ from image to image: a `vlm_judge` with
`parser: "([0-9])"` and `scale: 9` turns them into a reward in [0, 1] (`recipes/tiny-random-ocr-judge.yaml`).
Facts on what `transformers serve` accepts: `/work/shared/notes/ocr-vlm-rewards.md`, section 4.
"""

from __future__ import annotations

# ChatML, as sglang's `chatml-llava`: one `<image>` line per image part, then the text parts
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IMAGE_SIZE, PATCH_SIZE = 56, 14
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 16: the CLS feature is dropped ("default" strategy)
DIGITS = "0123456789"
_TRAINING_TEXT = [
    "You are given a text caption and a generated image. Final Score: 4",
    "Does this image match the description? Answer yes or no. Yes. No.",
    "a photo of a red cube on a blue sphere, two cats, <Score>3</Score>",
]


def build_tiny_llava(folder: str, seed: int = 0) -> str:
    """Writes a ~170k-parameter random LLaVA (CLIP vision tower, Llama LM, byte-level BPE, ChatML) to `folder`,
    loadable by `AutoProcessor` + `AutoModelForImageTextToText`. Returns `folder`. Nothing is downloaded."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        _TRAINING_TEXT,
        trainers.BpeTrainer(
            vocab_size=380, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>"},
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        ),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=32,
    )
    text = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        vision_feature_layer=-1,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    digit_ids = [tokenizer.convert_tokens_to_ids(digit) for digit in DIGITS]
    with torch.no_grad():  # every other token gets logit 0: greedy decoding picks a digit whenever one is > 0
        head = model.lm_head.weight
        keep = head[digit_ids].clone() * 50
        head.zero_()
        head[digit_ids] = keep
    model.generation_config.do_sample = False
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
