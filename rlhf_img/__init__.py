"""rlhf-img: post-train autoregressive text-to-image models with GRPO on TRL."""

from .config import ImageGRPOConfig, ImageModelConfig, PromptDataConfig
from .models import Policy, Sampling, load_policy
from .trainer import ImageGRPOTrainer

__version__ = "0.1.0"
__all__ = [
    "ImageGRPOConfig",
    "ImageGRPOTrainer",
    "ImageModelConfig",
    "Policy",
    "PromptDataConfig",
    "Sampling",
    "load_policy",
]
