"""Samplers (grouped, KV-cached, CFG-batched), teacher-forced scoring, rollout records and grids."""

from .grid import captioned_grid
from .records import save_rollouts
from .sampler import sample_image_codes, score_image_codes

__all__ = ["captioned_grid", "sample_image_codes", "save_rollouts", "score_image_codes"]
