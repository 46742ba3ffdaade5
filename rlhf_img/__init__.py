"""rlhf-img: post-train autoregressive text-to-image models with GRPO on TRL."""

from .config import ImageGRPOConfig, ImageModelConfig, PromptDataConfig
from .families import detect_family, load_policy, register_family
from .policy import Policy, Sampling
from .trainer import ImageGRPOTrainer

__version__ = "0.1.0"
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
