"""Upstream stages over the policy interface, the same for every family: `encode` (image/caption pairs -> the
family's actions, in memory-mapped Arrow shards), SFT / pretraining (teacher-forced log-likelihood of those
actions given the caption) and DPO on images (chosen vs rejected actions against a frozen reference). Each reads
and scores actions through `Policy.encode_images` and `Policy.logprobs`, so a family gets all of them by
implementing the policy interface."""
