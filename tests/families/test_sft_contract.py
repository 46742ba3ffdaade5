"""The SFT / pretraining stage (`rlhf_img/upstream/sft.py`) over every registered family's stand-in: the stage is
family-agnostic (it scores actions through `Policy.logprobs`), so the contract is that it really trains each family
and that what it writes loads back as that family."""

import torch
from datasets import Dataset
from numerics import assert_close_scaled

from rlhf_img import Sampling, load_policy
from rlhf_img.families import detect_family
from rlhf_img.upstream.likelihood import CONDITIONAL, UNCONDITIONAL, action_logprobs
from rlhf_img.upstream.sft import ActionSFTConfig, ActionSFTTrainer, reinitialize

from .test_encode_images import shapes_images


def _fresh(stand_in):
    name, tiny = stand_in
    return name, load_policy(tiny.checkpoint, name, **{**tiny.load_kwargs, "dtype": "float32"})


def _pairs(policy, count: int = 4):
    captions, images = shapes_images(count, policy.image_size)
    return captions, policy.encode_images(images)


def _nll(policy, model, captions, actions) -> float:
    with torch.no_grad():
        return float(-action_logprobs(policy, model, policy.encode_prompts(captions), actions).mean())


def test_one_sft_step_lowers_the_loss_on_a_fixed_batch_and_the_output_reloads_as_the_family(stand_in, tmp_path):
    """One full-fine-tuning step (transformers' Trainer, AdamW) on 4 encoded shapes images: the negative
    log-likelihood of those actions falls, and the saved folder loads as the family with that same loss."""
    name, policy = _fresh(stand_in)
    captions, actions = _pairs(policy)
    before = _nll(policy, policy.model, captions, actions)
    args = ActionSFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=3e-4,
        lr_scheduler_type="constant",
        caption_dropout=0.0,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = ActionSFTTrainer(policy, args, Dataset.from_dict({"caption": captions, "actions": actions.tolist()}))
    trainer.train()
    trainer.save_model(args.output_dir)
    after = _nll(policy, policy.model, captions, actions)
    assert after < before, (name, before, after)  # measured: every family falls by 0.6%-13% (janus least)
    assert detect_family(args.output_dir) == name
    reloaded = load_policy(args.output_dir, dtype="float32")
    assert_close_scaled(
        torch.tensor(_nll(reloaded, reloaded.model, captions, actions), dtype=torch.float64),
        torch.tensor(after, dtype=torch.float64),
        relative=1e-5,
    )


def test_dropped_captions_are_scored_under_the_samplers_unconditional_branch(stand_in):
    """A dropped caption is scored as CFG's null prompt: the guided scorer at scale 0 is exactly the unconditional
    branch. Checked against the sampler, which builds its unconditional rows by its own code path (the prefill):
    codes drawn at scale 0 come from that branch alone, and their sampling log-probs equal the scorer's."""
    name, policy = _fresh(stand_in)
    prompts = policy.encode_prompts(["a red circle", "two blue squares"])
    unconditional_sampling = Sampling(cfg_mode="guided", cfg_scale=0.0, sampler="plain")
    with torch.no_grad():
        rollout = policy.sample(
            policy.model, prompts, unconditional_sampling, generator=torch.Generator().manual_seed(0)
        )
        scored = action_logprobs(policy, policy.model, prompts, rollout.actions, torch.tensor([False, False]))
        conditional = policy.logprobs(policy.model, prompts, rollout.actions, CONDITIONAL)[0]
        mixed = action_logprobs(policy, policy.model, prompts, rollout.actions, torch.tensor([True, False]))
    assert_close_scaled(scored.double(), rollout.logprobs.double(), relative=2e-5)
    assert float((scored - conditional).abs().max()) > 1e-4, name  # the caption matters: a real second branch
    assert_close_scaled(mixed[0].double(), conditional[0].double(), relative=1e-5)
    assert_close_scaled(mixed[1].double(), scored[1].double(), relative=1e-5)
    assert UNCONDITIONAL.uses_uncond_when_scoring and not CONDITIONAL.uses_uncond_when_scoring


def test_from_scratch_redraws_the_trainable_weights_and_keeps_the_frozen_parts(stand_in):
    name, policy = _fresh(stand_in)
    model = policy.model
    before = {key: value.clone() for key, value in model.state_dict().items()}
    trainable = {key for key, parameter in model.named_parameters() if parameter.requires_grad}
    assert reinitialize(model) > 0
    after = model.state_dict()
    redrawn = {key for key in trainable if not torch.equal(before[key], after[key])}
    # a parameter its initialiser sets to a constant it already had (a norm's ones, a zero bias) may stay equal
    constant = {key for key in trainable - redrawn if before[key].unique().numel() == 1}
    assert redrawn | constant == trainable, (name, sorted(trainable - redrawn - constant)[:5])
    frozen = [key for key, parameter in model.named_parameters() if not parameter.requires_grad]
    assert all(torch.equal(before[key], after[key]) for key in frozen), name  # e.g. Janus' VQ and vision encoder
    if name == "llamagen":  # its initialiser's model-level step (run on the model itself, after its children)
        assert not model.output.weight.any()
