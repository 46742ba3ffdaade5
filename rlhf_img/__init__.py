"""rlhf-img: post-train autoregressive text-to-image models with GRPO on TRL."""

from ._version import __version__ as __version__  # the one version source (_version.py)
from .config import ImageGRPOConfig, ImageModelConfig, PromptDataConfig
from .families import detect_family, load_policy, register_family
from .policy import Policy, Sampling
from .trainer import ImageGRPOTrainer

__all__ = [
    "ImageGRPOConfig",
    "ImageGRPOTrainer",
    "ImageModelConfig",
    "Policy",
    "PromptDataConfig",
    "Sampling",
    "detect_family",
    "load_policy",
    "register_family",
]
