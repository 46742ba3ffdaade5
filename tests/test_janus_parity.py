"""Parity of the `janus` sampler and scorer with transformers' own `JanusForConditionalGeneration.generate(...,
generation_mode="image")` on the same tiny random model (saved and loaded in the released on-disk format).

How the two are aligned:
- same prompts: our `encode_prompts` is the processor's documented flow (`apply_chat_template(...,
  add_generation_prompt=True)` then `processor(text=..., generation_mode="image")`, left padding);
- same unconditional rows: `generate` replaces every token but BOS and `<begin_of_image>` with the generation
  config's pad token under the conditional attention mask; so do we;
- same rule: `generate` applies `ClassifierFreeGuidanceLogitsProcessor` (uncond + s * (cond - uncond)), then
  `TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`, softmax, `torch.multinomial` (or argmax when
  `do_sample=False`); ours is the same order (`guide`, `/ temperature`, top-k, top-p, softmax, multinomial), and
  greedy is `top_k=1`;
- same randomness: `generate` draws one `torch.multinomial(probs (B, V), 1)` per step from the global CPU
  generator; ours draws the same call from `torch.Generator().manual_seed(seed)`, so `torch.manual_seed(seed)`
  before `generate` gives both the same uniform numbers in the same order.
Where the rules differ (not compared): `generate` has no unguided mode (it always doubles the batch; with
`guidance_scale <= 1` it fails), uses a static cache and positions counted over padding (ours: a dynamic cache,
positions that skip left padding; RoPE makes the two equal up to rounding).

Processed scores are read from inside `generate`: a logits processor that records its input is appended after
the processors `generate` builds (its returned `scores` hold only the last step). Raw scores (both branches, before
guidance) are recorded by a processor passed in `logits_processor`, which `generate` runs before its guidance.
"""

import pytest
import torch
from numerics import assert_close_scaled
from transformers import (
    AutoProcessor,
    JanusForConditionalGeneration,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rlhf_img import Sampling, load_policy

PROMPTS = ["a red apple on a table", "x"]  # different lengths: the second row is left-padded


class Recorder(LogitsProcessor):
    def __init__(self):
        self.scores = []

    def __call__(self, input_ids, scores):
        self.scores.append(scores.detach().clone())
        return scores


@pytest.fixture(scope="module")
def janus(tmp_path_factory):
    from rlhf_img.families.janus.tiny import save_tiny_janus

    path = save_tiny_janus(str(tmp_path_factory.mktemp("janus") / "tiny"), seed=0)
    reference = JanusForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return load_policy(path, dtype="float32"), reference, AutoProcessor.from_pretrained(path)


def reference_generate(reference, processor, seed, **generate_kwargs):
    """`generate(generation_mode="image")` with the raw (2B, V) and the processed (B, V) scores of every step."""
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": p}]}], add_generation_prompt=True
        )
        for p in PROMPTS
    ]
    inputs = processor(text=texts, generation_mode="image", padding=True, return_tensors="pt")
    raw, processed = Recorder(), Recorder()
    build = reference._get_logits_processor

    def with_recorder(*args, **kwargs):  # the processors generate builds, then the recorder
        processors = build(*args, **kwargs)
        processors.append(processed)
        return processors

    reference._get_logits_processor = with_recorder
    try:
        torch.manual_seed(seed)
        tokens = reference.generate(
            inputs.input_ids,
            attention_mask=inputs.attention_mask,
            generation_mode="image",
            logits_processor=LogitsProcessorList([raw]),
            **generate_kwargs,
        )
    finally:
        del reference._get_logits_processor
    return inputs, tokens, torch.stack(raw.scores, 1), torch.stack(processed.scores, 1)


def test_prompts_and_unconditional_rows_are_generates(janus):
    policy, reference, processor = janus
    inputs, _, raw, _ = reference_generate(reference, processor, 0, do_sample=False, guidance_scale=2.0)
    batch = policy.encode_prompts(PROMPTS)
    assert torch.equal(batch.input_ids, inputs.input_ids) and torch.equal(batch.attention_mask, inputs.attention_mask)
    # the unconditional rows generate builds produce the raw scores of its second half; ours must reproduce them
    with torch.no_grad():
        embeds = reference.get_input_embeddings()(policy.unconditional_ids(batch.input_ids))
        hidden = reference.model.language_model(
            inputs_embeds=embeds, attention_mask=batch.attention_mask
        ).last_hidden_state
        uncond_first = reference.model.generation_head(hidden[:, -1])
    assert_close_scaled(uncond_first, raw[len(PROMPTS) :, 0], relative=1e-5)


@pytest.mark.parametrize("cfg_scale", [2.0, 5.0])
def test_greedy_tokens_identical_to_generate(janus, cfg_scale):
    policy, reference, processor = janus
    _, tokens, _, _ = reference_generate(reference, processor, 0, do_sample=False, guidance_scale=cfg_scale)
    ours = policy.sample(
        policy.model, policy.encode_prompts(PROMPTS), Sampling(cfg_mode="guided", cfg_scale=cfg_scale, top_k=1)
    )
    assert torch.equal(ours.actions, tokens)


SAMPLING_RULES = [
    dict(temperature=1.0, top_k=0, top_p=1.0),
    dict(temperature=0.7, top_k=16, top_p=1.0),
    dict(temperature=1.3, top_k=0, top_p=0.9),
]


@pytest.mark.parametrize("rule", SAMPLING_RULES, ids=["plain", "temperature+top_k", "temperature+top_p"])
@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_tokens_identical_to_generate_with_the_same_seed(janus, rule, seed):
    policy, reference, processor = janus
    kwargs = dict(
        do_sample=True,
        guidance_scale=5.0,
        temperature=rule["temperature"],
        top_k=rule["top_k"] or None,
        top_p=rule["top_p"],
    )
    _, tokens, _, _ = reference_generate(reference, processor, seed, **kwargs)
    for cfg_mode in ("guided", "sample_only", "guided_detached_uncond"):  # all three sample the guided rule
        ours = policy.sample(
            policy.model,
            policy.encode_prompts(PROMPTS),
            Sampling(cfg_mode=cfg_mode, cfg_scale=5.0, **rule),
            generator=torch.Generator().manual_seed(seed),
        )
        assert torch.equal(ours.actions, tokens), cfg_mode


def reference_logprobs(scores, tokens):
    return torch.log_softmax(scores.double(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("rule", SAMPLING_RULES, ids=["plain", "temperature+top_k", "temperature+top_p"])
def test_teacher_forced_logprobs_equal_log_softmax_of_generates_scores(janus, rule):
    """Guided modes: generate's processed scores. Conditional modes: the conditional half of generate's raw scores
    through transformers' own warpers (temperature, top-k, top-p) in generate's order."""
    policy, reference, processor = janus
    kwargs = dict(
        do_sample=True,
        guidance_scale=5.0,
        temperature=rule["temperature"],
        top_k=rule["top_k"] or None,
        top_p=rule["top_p"],
    )
    inputs, tokens, raw, processed = reference_generate(reference, processor, 3, **kwargs)
    batch = policy.encode_prompts(PROMPTS)
    guided_expected = reference_logprobs(processed, tokens)
    warpers = [TemperatureLogitsWarper(rule["temperature"])]
    if rule["top_k"]:
        warpers.append(TopKLogitsWarper(rule["top_k"]))
    if rule["top_p"] < 1:
        warpers.append(TopPLogitsWarper(rule["top_p"]))
    cond = raw[: len(PROMPTS)]
    warped = torch.stack([LogitsProcessorList(warpers)(inputs.input_ids, cond[:, t]) for t in range(cond.size(1))], 1)
    # a guided sample can fall outside the conditional branch's top-k/top-p set; our scorer keeps the taken code in the
    # support (README, "CFG modes"), so put its temperature-scaled logit back where the warpers dropped it
    taken = tokens.unsqueeze(-1)
    warped = warped.scatter(-1, taken, cond.gather(-1, taken) / rule["temperature"])
    cond_expected = reference_logprobs(warped, tokens)
    with torch.no_grad():
        for cfg_mode in ("none", "sample_only", "guided", "guided_detached_uncond"):
            ours, _ = policy.logprobs(policy.model, batch, tokens, Sampling(cfg_mode=cfg_mode, cfg_scale=5.0, **rule))
            expected = guided_expected if cfg_mode.startswith("guided") else cond_expected
            assert torch.isfinite(expected).all()
            assert_close_scaled(ours, expected, relative=1e-5)
