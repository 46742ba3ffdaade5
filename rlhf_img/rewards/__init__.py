"""Rewards: a registry of built-ins, user rewards by `file.py:func` / `module:func`, and the call contract."""

from . import aesthetic, clip_score, compression, geneval, hpsv2, ocr, pickscore, server, shapes_geneval, vlm_judge, vqa  # noqa: F401  (registers the built-ins)
from .compose import RewardError, RewardFunction, build_rewards, score_rewards
from .loading import RewardConfigError, RewardSpec, resolve_reward
from .registry import REWARD_REGISTRY, list_rewards, register_reward
from .reward_set import ImageEmbedder, RewardSet, check_unique_names

__all__ = [
    "REWARD_REGISTRY",
    "RewardConfigError",
    "RewardError",
    "ImageEmbedder",
    "RewardFunction",
    "RewardSet",
    "RewardSpec",
    "build_rewards",
    "check_unique_names",
    "list_rewards",
    "register_reward",
    "resolve_reward",
    "score_rewards",
]
