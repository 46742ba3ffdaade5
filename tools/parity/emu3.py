"""Reference data of the `emu3` family from transformers' own Emu3 code, for `tests/test_emu3_parity.py`.

    python tools/parity/emu3.py --out tests/data/emu3_parity            # write the model and the reference
    python tools/parity/emu3.py --out tests/data/emu3_parity --compare  # print our parity figures against it

The reference is the installed transformers, run on the CPU in float32 on a tiny random Emu3 (this family's
stand-in, `rlhf_img/families/emu3/tiny.py`, seed 0, its weights rounded to float16 precision and saved in float16 so
the folder stays small; both sides load it in float32). Nothing is downloaded. For each setting in `SETTINGS` and
each seed, with two prompts of equal token length (transformers' unbatched CFG processor positions its
unconditional rows from its own cache, so no padding is involved on either side):

  * prompts and the negative prompt from `Emu3Processor(..., return_for_image_generation=True)` at the stand-in's
    image area and a 2:1 ratio (a 3x6 grid: rows and columns cannot be swapped unnoticed); the negative prompt is
    built as BAAI's image_generation.py builds it, WITH the image header (this family's choice);
  * `torch.manual_seed(seed)`, then `generate(do_sample=True, guidance_scale=g, negative_prompt_ids=...,
    prefix_allowed_tokens_fn=<Emu3's structure: w visual tokens + end-of-line per row, then end-of-frame,
    end-of-image, EOS>, temperature, top_k, output_scores=True, output_logits=True)`;
  * recorded: the generated tokens `(B, h * (w + 1) + 3)`; at each visual step the log-softmax (float64) of the
    processed scores at the drawn token (`guided_logprobs`: the distribution generate drew from) and of the raw
    conditional logits restricted to the visual block, through transformers' own temperature / top-k warpers, the
    drawn token kept in the support (`conditional_logprobs`: what the scorer gives under cfg_mode none); for seed 0
    of each setting `decode_image_tokens(...)` of the generated tokens (`decoded`, the VQ's normalised pixels).

Written to `--out`: `model/` (the checkpoint), `reference.safetensors`, `settings.json`, and a README.md.
`--compare` runs our policy on the committed files and prints token agreement, the largest log-prob difference
and the largest decode difference, the figures in docs/families/emu3.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoProcessor,
    Emu3ForConditionalGeneration,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from rlhf_img.families.emu3.configuration import BAAI_NEGATIVE_PROMPT  # noqa: E402
from rlhf_img.sampling.generators import SampleGenerators  # noqa: E402

PROMPTS = ["a red apple", "a blue sky."]  # equal token lengths (byte-level tokenizer: equal character counts)
IMAGE_AREA, RATIO = 32 * 32, "2:1"  # a 3x6 grid of the stand-in's 8x VQ
SEEDS = (0, 1, 2, 3)
SETTINGS = {  # name -> (cfg_scale, top_k, temperature)
    "guidance 1": (1.0, 0, 1.0),
    "guidance 1 + top-k 16": (1.0, 16, 1.0),
    "guidance 3": (3.0, 0, 1.0),
    "guidance 3 + top-k 8 + temperature 0.7": (3.0, 8, 0.7),
}
FAMILY_CONFIG = {"image_area": IMAGE_AREA, "ratio": RATIO}


def structure_constraint(tokenizer, visual_ids: list[int], height: int, width: int):
    """`prefix_allowed_tokens_fn` of Emu3's image layout, counted from the `<|image token|>` of each row: `width`
    visual tokens then end-of-line, `height` times, then end-of-frame, end-of-image, EOS, then padding."""
    wrapper, end_of_line = tokenizer.image_wrapper_token_id, tokenizer.convert_tokens_to_ids("<|extra_200|>")
    tail = [tokenizer.eof_token_id, tokenizer.eoi_token_id, tokenizer.eos_token_id]
    body = height * (width + 1)

    def allowed(batch_id: int, ids: torch.Tensor) -> list[int]:
        written = ids.size(0) - 1 - int((ids == wrapper).nonzero()[0, 0])  # image tokens written so far
        if written < body:
            return [end_of_line] if written % (width + 1) == width else visual_ids
        return [tail[written - body]] if written - body < 3 else [tokenizer.pad_token_id]

    return allowed


def reference_run(model, processor, cfg_scale: float, top_k: int, temperature: float, seed: int) -> dict:
    """One seeded `generate` of the reference; see the module docstring for what is recorded."""
    tokenizer = processor.tokenizer
    inputs = processor(
        text=PROMPTS,
        return_for_image_generation=True,
        image_area=IMAGE_AREA,
        ratio=RATIO,
        padding=True,
        return_tensors="pt",
    )
    negative = processor(
        text=[BAAI_NEGATIVE_PROMPT] * len(PROMPTS),
        return_for_image_generation=True,
        image_area=IMAGE_AREA,
        ratio=RATIO,
        return_tensors="pt",
    )
    height, width = inputs["image_sizes"][0]
    visual_ids = model.vocabulary_mapping.image_tokens
    torch.manual_seed(seed)
    out = model.generate(
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        do_sample=True,
        max_new_tokens=height * (width + 1) + 3,
        guidance_scale=cfg_scale,
        top_k=top_k,
        temperature=temperature,
        negative_prompt_ids=negative.input_ids,
        negative_prompt_attention_mask=negative.attention_mask,
        prefix_allowed_tokens_fn=structure_constraint(tokenizer, visual_ids, height, width),
        output_scores=True,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    generated = out.sequences[:, inputs.input_ids.size(1) :]  # (B, h * (w + 1) + 3)
    steps = [step for step in range(height * (width + 1)) if step % (width + 1) != width]  # visual steps
    drawn = generated[:, steps]  # (B, h * w) token ids
    processed = torch.stack([out.scores[step] for step in steps], 1).double()  # (B, T, V)
    guided = torch.log_softmax(processed, -1).gather(-1, drawn.unsqueeze(-1)).squeeze(-1)
    offset, count = visual_ids[0], len(visual_ids)
    raw = torch.stack([out.logits[step] for step in steps], 1)[..., offset : offset + count]  # (B, T, K) conditional
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else [])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    warped = torch.stack([warpers(inputs.input_ids, raw[:, t]) for t in range(raw.size(1))], 1)
    codes = (drawn - offset).unsqueeze(-1)
    warped = warped.scatter(-1, codes, raw.gather(-1, codes) / temperature)  # the drawn code stays in the support
    conditional = torch.log_softmax(warped.double(), -1).gather(-1, codes).squeeze(-1)
    with torch.no_grad():
        decoded = model.decode_image_tokens(image_tokens=generated, height=height, width=width).float()
    return {
        "input_ids": inputs.input_ids,
        "negative_ids": negative.input_ids,
        "tokens": generated,
        "guided_logprobs": guided,
        "conditional_logprobs": conditional,
        "decoded": decoded,
        "grid": torch.tensor([height, width]),
    }


class GenerateDraws(SampleGenerators):
    """Our sampler's draws made the way `generate` makes them, so both consume one random stream identically.

    `generate` draws one `torch.multinomial(probs (B, V), 1)` per step over the FULL vocabulary from the global CPU
    generator, forced steps included (multinomial draws with the exponential trick: `V` exponentials per row, whatever
    the probabilities). Our engine draws only visual codes, over the visual block. This harness (test-side only)
    places our probabilities at their token ids in a `(B, V)` zero tensor and calls the same multinomial with a
    `torch.Generator` seeded as `torch.manual_seed(seed)` seeds the global one, and spends one full-vocabulary draw
    where `generate` drew a forced end-of-line token (before every row but the first)."""

    def __init__(self, seed: int, vocab_size: int, visual_offset: int, width: int) -> None:
        super().__init__([seed], "cpu")
        self.vocab_size, self.visual_offset, self.width = vocab_size, visual_offset, width
        self.draws = 0

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        generator = self.generators[0]
        full = probs.new_zeros(probs.size(0), self.vocab_size)
        if self.draws and self.draws % self.width == 0:  # generate drew the forced end-of-line token here
            torch.multinomial(full.index_fill(1, torch.tensor([0]), 1.0), 1, generator=generator)
        self.draws += 1
        full[:, self.visual_offset : self.visual_offset + probs.size(1)] = probs
        return torch.multinomial(full, 1, generator=generator).squeeze(1) - self.visual_offset


def write(out: str) -> None:
    from rlhf_img.families.emu3.tiny import save_tiny_emu3

    model_dir = os.path.join(out, "model")
    save_tiny_emu3(model_dir, seed=0)
    model = Emu3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    model.to(torch.float16).save_pretrained(model_dir)  # float16 precision, float16 on disk: a small folder
    model = Emu3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    tensors = {}
    for name, (cfg_scale, top_k, temperature) in SETTINGS.items():
        for seed in SEEDS:
            run = reference_run(model, processor, cfg_scale, top_k, temperature, seed)
            for key, value in run.items():
                if key == "decoded" and seed != SEEDS[0]:
                    continue
                if key in ("input_ids", "negative_ids", "grid") and tensors.get(key) is not None:
                    assert torch.equal(tensors[key], value)
                    continue
                tensors[key if key in ("input_ids", "negative_ids", "grid") else f"{name}/{seed}/{key}"] = value
    save_file({key: value.contiguous() for key, value in tensors.items()}, os.path.join(out, "reference.safetensors"))
    with open(os.path.join(out, "settings.json"), "w") as f:
        json.dump(
            {
                "prompts": PROMPTS,
                "family_config": FAMILY_CONFIG,
                "seeds": list(SEEDS),
                "settings": {
                    name: dict(zip(("cfg_scale", "top_k", "temperature"), values)) for name, values in SETTINGS.items()
                },
                "transformers": __import__("transformers").__version__,
                "torch": torch.__version__,
            },
            f,
            indent=2,
        )
    print(f"wrote {out}: model/, reference.safetensors, settings.json")


def compare(out: str) -> None:
    """Our policy on the committed files: the parity figures."""
    from rlhf_img import Sampling, load_policy

    reference = load_file(os.path.join(out, "reference.safetensors"))
    policy = load_policy(os.path.join(out, "model"), "emu3", dtype="float32", family_config=FAMILY_CONFIG)
    batch = policy.encode_prompts(PROMPTS)
    assert torch.equal(batch.input_ids, reference["input_ids"])
    assert list(policy.adapter.unconditional_ids) == reference["negative_ids"][0].tolist()
    vocab = policy.model.config.text_config.vocab_size
    same = total = 0
    worst_logp, largest, worst_decode = 0.0, 0.0, 0.0
    for name, (cfg_scale, top_k, temperature) in SETTINGS.items():
        for seed in SEEDS:
            sampling = Sampling("guided", cfg_scale, temperature=temperature, top_k=top_k, sampler="plain")
            draws = GenerateDraws(seed, vocab, policy.visual_offset, policy.grid[1])
            rollout = policy.sample(policy.model, batch, sampling, generator=draws)
            tokens = reference[f"{name}/{seed}/tokens"]
            ours = policy.image_tokens(rollout.actions)
            same, total = same + int((ours == tokens).sum()), total + tokens.numel()
            with torch.no_grad():
                for mode, key in (("guided", "guided_logprobs"), ("none", "conditional_logprobs")):
                    expected = reference[f"{name}/{seed}/{key}"]
                    scored = policy.logprobs(
                        policy.model,
                        batch,
                        rollout.actions,
                        Sampling(mode, cfg_scale, temperature=temperature, top_k=top_k),
                    )[0]
                    worst_logp = max(worst_logp, float((scored.double() - expected).abs().max()))
                    largest = max(largest, float(expected.abs().max()))
                worst_logp = max(
                    worst_logp,
                    float((rollout.logprobs.double() - reference[f"{name}/{seed}/guided_logprobs"]).abs().max()),
                )
            if seed == SEEDS[0]:
                decoded = reference[f"{name}/{seed}/decoded"]
                expected = (decoded * policy.pixel_std + policy.pixel_mean).clamp(0, 1)
                worst_decode = max(worst_decode, float((policy.decode(rollout.actions) - expected).abs().max()))
    print(
        f"emu3 parity vs transformers {__import__('transformers').__version__} generate, {len(SETTINGS)} settings x "
        f"{len(SEEDS)} seeds x {len(PROMPTS)} images: {same}/{total} tokens identical (structural tokens included); "
        f"max |log-prob difference| {worst_logp:.1e} (sampler and scorer, guided and conditional; log-probs up to "
        f"{largest:.1f}); max |decode difference| {worst_decode:.1e} (pixels in [0, 1])"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/data/emu3_parity")
    parser.add_argument("--compare", action="store_true", help="print our figures against the committed reference")
    args = parser.parse_args()
    if args.compare:
        compare(args.out)
    else:
        write(args.out)


if __name__ == "__main__":
    main()
