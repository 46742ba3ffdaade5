"""The chunked log-prob pass equals the unchunked one (values, entropies, gradients) and its memory grows with
the chunk, not with the number of scored positions.

Inputs are float64 so that scoring a subset of rows gives the same logits bit for bit as scoring all of them
(scored_logprobs rounds them to float32 once, identically on both paths); what is compared is then the
chunking itself, with tolerances scaled to the values.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from numerics import assert_close_scaled
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from rlhf_img import Sampling, load_policy
from rlhf_img.sampling.chunked_logprobs import chunked_scored_logprobs

BATCH, TOKENS, WIDTH, CODES = 3, 10, 6, 40  # 30 scored positions


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(WIDTH, CODES).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(CODES, WIDTH, generator=generator, dtype=torch.float64))
        head.bias.copy_(torch.randn(CODES, generator=generator, dtype=torch.float64))
    hidden = torch.randn(BATCH, TOKENS, WIDTH, generator=generator, dtype=torch.float64)
    uncond = torch.randn(BATCH, TOKENS, WIDTH, generator=generator, dtype=torch.float64)
    actions = torch.randint(0, CODES, (BATCH, TOKENS), generator=generator)
    # weights for a loss that uses every log-prob and entropy differently
    loss_weights = torch.randn(2, BATCH, TOKENS, generator=generator)
    return head, hidden, uncond, actions, loss_weights


def _score_and_backward(sampling: Sampling, chunk_size: int, with_uncond: bool, detach_uncond: bool):
    head, hidden, uncond, actions, loss_weights = _inputs()
    hidden.requires_grad_(True)
    uncond.requires_grad_(True)
    logp, entropy = chunked_scored_logprobs(
        head,
        hidden,
        actions,
        sampling,
        uncond if with_uncond else None,
        detach_uncond=detach_uncond,
        chunk_size=chunk_size,
    )
    ((logp * loss_weights[0]).sum() + (entropy * loss_weights[1]).sum()).backward()
    grads = {"hidden": hidden.grad, "uncond": uncond.grad, "weight": head.weight.grad, "bias": head.bias.grad}
    return logp.detach(), entropy.detach(), grads


CFG_CASES = {  # (cfg_mode, branch given to the helper, detached)
    "none": ("none", False, False),
    "guided": ("guided", True, False),
    "guided_detached_uncond": ("guided_detached_uncond", True, True),
}
TRUNCATIONS = {"full": (0, 1.0), "top_k": (7, 1.0), "top_p": (0, 0.8), "top_k_and_top_p": (12, 0.7)}


@pytest.mark.parametrize("chunk_size", [1, 7, 15, 30, 64])  # 7: does not divide 30; 64: one chunk larger than all
@pytest.mark.parametrize("truncation", list(TRUNCATIONS))
@pytest.mark.parametrize("cfg_case", list(CFG_CASES))
def test_chunked_logprobs_entropies_and_gradients_equal_unchunked(cfg_case, truncation, chunk_size):
    cfg_mode, with_uncond, detached = CFG_CASES[cfg_case]
    top_k, top_p = TRUNCATIONS[truncation]
    sampling = Sampling(cfg_mode=cfg_mode, cfg_scale=2.5, temperature=0.8, top_k=top_k, top_p=top_p)
    logp, entropy, grads = _score_and_backward(sampling, chunk_size, with_uncond, detached)
    ref_logp, ref_entropy, ref_grads = _score_and_backward(sampling, 0, with_uncond, detached)

    assert logp.shape == entropy.shape == (BATCH, TOKENS) and logp.dtype == torch.float32
    assert torch.isfinite(logp).all()
    assert_close_scaled(logp, ref_logp, relative=1e-6)
    assert_close_scaled(entropy, ref_entropy, relative=1e-6)
    for name, ref in ref_grads.items():
        if ref is None:  # the unconditional branch: absent without guidance, detached in guided_detached_uncond
            assert grads[name] is None, name
        else:
            assert grads[name] is not None and grads[name].abs().max() > 0, name
            assert_close_scaled(grads[name], ref, relative=1e-6)
    assert (ref_grads["uncond"] is None) == (not with_uncond or detached)


def test_chunked_scoring_without_grad_equals_unchunked_and_keeps_no_graph():
    head, hidden, uncond, actions, _ = _inputs(seed=1)
    sampling = Sampling(cfg_mode="guided", cfg_scale=3.0, top_k=9, logprob_chunk_size=4)
    with torch.no_grad():
        logp, entropy = chunked_scored_logprobs(head, hidden, actions, sampling, uncond)  # chunk from `sampling`
        ref_logp, ref_entropy = chunked_scored_logprobs(head, hidden, actions, sampling, uncond, chunk_size=0)
    assert not logp.requires_grad
    assert_close_scaled(logp, ref_logp, relative=1e-6)
    assert_close_scaled(entropy, ref_entropy, relative=1e-6)


def test_bad_chunk_size_and_shapes_are_refused():
    head, hidden, uncond, actions, _ = _inputs()
    with pytest.raises(ValueError, match="logprob_chunk_size"):
        Sampling(logprob_chunk_size=-1)
    with pytest.raises(ValueError, match="logprob_chunk_size"):
        chunked_scored_logprobs(head, hidden, actions, Sampling(), chunk_size=-3)
    with pytest.raises(ValueError, match="do not match actions"):
        chunked_scored_logprobs(head, hidden, actions[:, :-1], Sampling())
    with pytest.raises(ValueError, match="unconditional hidden states"):
        chunked_scored_logprobs(head, hidden, actions, Sampling(), uncond[:, :-1])


def _tiny_policy(family: str, tiny_checkpoint: str, directory):
    if family == "causal_vq":
        return load_policy(tiny_checkpoint, "causal_vq")
    if family == "llamagen":
        from rlhf_img.families.llamagen.tiny import (
            save_tiny_llamagen,
            tiny_llamagen_family_config,
        )

        path = save_tiny_llamagen(str(directory / "tiny-llamagen"), seed=0)
        return load_policy(path, "llamagen", dtype="float32", family_config=tiny_llamagen_family_config(path))
    from rlhf_img.families.janus.tiny import save_tiny_janus

    return load_policy(save_tiny_janus(str(directory / "Janus-Pro-tiny"), seed=0), dtype="float32")


@pytest.mark.parametrize("family", ["causal_vq", "llamagen", "janus"])
def test_family_scorers_give_the_same_logprobs_and_gradients_for_any_chunk(tiny_checkpoint, tmp_path, family):
    """Each family's real scorer (SimpleAR / causal_vq: restricted LM-head rows; LlamaGen: the output layer;
    Janus: the generation head) through the helper, in every CFG mode that scores a different distribution."""
    policy = _tiny_policy(family, tiny_checkpoint, tmp_path)
    policy.model.double()
    prompts = policy.encode_prompts(["a red circle", "two blue squares"])
    code_count = 40 if family == "causal_vq" else 16  # a subset of every tiny codebook
    codes = torch.randint(0, code_count, (2, policy.num_actions), generator=torch.Generator().manual_seed(0))
    trainable = [(n, p) for n, p in policy.model.named_parameters() if p.requires_grad]

    def run(cfg_mode, chunk_size):
        sampling = Sampling(cfg_mode=cfg_mode, cfg_scale=3.0, top_k=20, logprob_chunk_size=chunk_size)
        policy.model.zero_grad()
        logp, entropy = policy.logprobs(policy.model, prompts, codes, sampling)
        (logp.sum() + 0.5 * entropy.sum()).backward()
        return logp.detach(), entropy.detach(), {n: p.grad.clone() for n, p in trainable if p.grad is not None}

    for cfg_mode in ("none", "guided", "guided_detached_uncond"):
        logp, entropy, grads = run(cfg_mode, 5)  # 5 does not divide 2 * T
        ref_logp, ref_entropy, ref_grads = run(cfg_mode, 0)
        assert_close_scaled(logp, ref_logp, relative=1e-6)
        assert_close_scaled(entropy, ref_entropy, relative=1e-6)
        assert grads.keys() == ref_grads.keys() and ref_grads, cfg_mode
        for name, ref in ref_grads.items():
            assert_close_scaled(grads[name], ref, relative=1e-6)


class PeakLiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages created while active and still alive (forward AND backward: the
    autograd engine runs CPU backward ops under the caller's dispatch mode). Deterministic, unlike RSS."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._alive: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self._alive:
                    self._alive.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._release, key, storage.nbytes())
        return out

    def _release(self, key: int, nbytes: int) -> None:
        self._alive.discard(key)
        self.live -= nbytes


def _peak_bytes_of_scoring_step(tokens: int, chunk_size: int, codes: int = 2048, width: int = 8) -> int:
    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(width, codes)
    hidden = torch.randn(2, tokens, width, generator=generator, requires_grad=True)
    uncond = torch.randn(2, tokens, width, generator=generator, requires_grad=True)
    actions = torch.randint(0, codes, (2, tokens), generator=generator)
    sampling = Sampling(cfg_mode="guided", cfg_scale=3.0, top_k=50, top_p=0.9)
    with PeakLiveTensorBytes() as tracker:
        logp, entropy = chunked_scored_logprobs(head, hidden, actions, sampling, uncond, chunk_size=chunk_size)
        (logp.sum() + entropy.sum()).backward()
    return tracker.peak


def test_peak_memory_grows_with_the_chunk_not_with_the_number_of_tokens():
    chunk, codes, short_tokens, long_tokens = 16, 2048, 64, 512
    logits_row = codes * 4  # one float32 row of logits
    one_logits_tensor = chunk * logits_row  # one float32 (chunk, K) tensor
    added_positions = 2 * (long_tokens - short_tokens)  # B = 2
    short, long = _peak_bytes_of_scoring_step(short_tokens, chunk), _peak_bytes_of_scoring_step(long_tokens, chunk)
    # 8x the positions: the chunked peak grows only by per-position hidden-state grads and outputs (O(C), not O(K))
    assert (long - short) / added_positions < logits_row / 8, (short, long)
    assert long < 24 * one_logits_tensor, long  # a bounded number of (chunk, K) tensors at once
    # ... while a larger chunk raises it, and the unchunked pass keeps several (B * T, K) tensors alive
    assert _peak_bytes_of_scoring_step(long_tokens, 4 * chunk) > short + 2 * one_logits_tensor
    unchunked_short = _peak_bytes_of_scoring_step(short_tokens, 0)
    unchunked_long = _peak_bytes_of_scoring_step(long_tokens, 0)
    assert (unchunked_long - unchunked_short) / added_positions > 4 * logits_row, (unchunked_short, unchunked_long)
    assert unchunked_long > 10 * long
