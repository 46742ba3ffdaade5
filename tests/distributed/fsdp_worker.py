"""Run by tests/distributed/test_fsdp_rollouts.py under `torchrun --nproc_per_node 2` (gloo, CPU): a tiny causal_vq policy
sharded with FSDP2 (`fully_shard` per decoder layer and on the root, as accelerate's `fsdp.yaml` does) samples,
scores and back-propagates exactly like an unsharded copy. Exits non-zero on any difference."""

import copy
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from rlhf_img import Sampling, load_policy
from rlhf_img.fsdp import unsharded_root
from rlhf_img.sampling import SampleGenerators


def main(checkpoint: str) -> None:
    dist.init_process_group("gloo")
    policy = load_policy(checkpoint, "causal_vq")
    reference = copy.deepcopy(policy.model)
    sharded = policy.model
    for layer in sharded.model.layers:
        fully_shard(layer)
    fully_shard(sharded)
    batch = policy.encode_prompts(["a red circle", "two small squares on the left"])
    sampling = Sampling(cfg_mode="guided", cfg_scale=2.0, top_k=20)

    def generators() -> SampleGenerators:  # the same samples on both ranks: FSDP's averaged gradient = the local one
        return SampleGenerators.for_samples(0, "train", 0, [0, 1], "cpu")

    with torch.no_grad(), unsharded_root(sharded):
        rollout = policy.sample(sharded, batch, sampling, generators())
    with torch.no_grad():
        expected = policy.sample(reference, batch, sampling, generators())
    assert torch.equal(rollout.actions, expected.actions), "FSDP2 sampling drew different codes"

    logps, _ = policy.logprobs(sharded, batch, rollout.actions, sampling)
    expected_logps, _ = policy.logprobs(reference, batch, rollout.actions, sampling)
    scale = expected_logps.abs().max().item()
    assert (logps - expected_logps).abs().max().item() <= 1e-5 * scale, "FSDP2 log-probs differ"
    logps.sum().backward()
    expected_logps.sum().backward()
    references = dict(reference.named_parameters())
    checked = 0
    for name, parameter in sharded.named_parameters():
        expected_grad = references[name].grad
        if expected_grad is None:
            continue
        grad = parameter.grad.full_tensor()  # a sharded DTensor: gather it to compare
        bound = 1e-5 * expected_grad.abs().max().item()
        assert (grad - expected_grad).abs().max().item() <= bound, f"FSDP2 gradient of {name} differs"
        checked += 1
    assert checked > 10, f"only {checked} parameters had gradients"
    print(f"rank {dist.get_rank()}: FSDP2 rollout, log-probs and {checked} gradients match", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
