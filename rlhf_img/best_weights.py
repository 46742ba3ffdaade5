"""`keep_best`: end training with the weights of the in-loop eval step that scored best, not the last ones.

transformers' own `load_best_model_at_end` needs `Trainer.evaluate` (an eval dataset and loss) and a full
checkpoint saved at every eval step; the in-loop eval (`in_loop_eval.py`) is a callback on fixed prompts and
seeds. So the smallest correct thing instead: after each in-loop eval, when `best_metric` beats the best so far
(strictly: ties keep the earlier step; or, with `best_metric_tolerance` t > 0, when it reads within t of the best
reading so far, so a later step wins over an earlier one that was better only by the eval's noise), keep a CPU copy of the trainable weights (the LoRA adapter, or the
whole model under full fine-tuning); when training ends, copy them back into the model, so what
`save_model` writes next is that step's weights. The step is printed, written to `output_dir/best_step.json`
and set as `trainer_state.json`'s `best_global_step` / `best_metric`.

The main process scores the eval and broadcasts the value, so every DDP replica keeps and restores the same
copy. Sharded weights (DeepSpeed, FSDP) are refused at construction. A resumed run only compares the evals
after its resume step (the copy lives in memory, not in checkpoints), and says so.
"""

from __future__ import annotations

import json
import logging
import math
import os

import torch
from accelerate.utils import broadcast

logger = logging.getLogger(__name__)

BEST_STEP_FILE = "best_step.json"


class KeepBestError(ValueError):
    """keep_best cannot work as configured (one line: what and why)."""


def resolve_best_metric(metric: str | None, available: list[str]) -> str:
    """The key to compare: `metric` (checked against what the in-loop eval logs), or the default (GenEval's
    overall when it is computed, else the weighted eval reward)."""
    if metric is None:
        return "eval_geneval/overall" if "eval_geneval/overall" in available else "eval_reward"
    if metric not in available:
        raise KeepBestError(
            f"best_metric {metric!r} is not logged by this run's in-loop eval; it logs {', '.join(available)}"
        )
    return metric


def describe_kept(record: dict) -> str:
    """Why the kept step was kept, in one clause, from a `best_step.json` record: the trainer's log line and the
    quickstart's summary both say it this way."""

    def reading(value: float | None) -> str:
        return "None" if value is None else f"{value:.4g}"

    evals = len(record["evals"])
    peak_step = record.get("peak_step", record["best_step"])  # files written before the tolerance existed
    if peak_step == record["best_step"]:
        how = f"best of {evals} in-loop evals"
    else:
        how = (
            f"the latest of {evals} in-loop evals within {record['tolerance']:g} of the best, "
            f"{reading(record['peak_value'])} at step {peak_step}"
        )
    return (
        f"{record['metric']} {reading(record['best_value'])}, {how}; "
        f"last step {record['last_step']}: {reading(record['last_value'])}"
    )


class BestWeights:
    """A CPU copy of the trainable weights at the best in-loop eval step so far.

    Args:
        metric: the logged key to compare (`eval_geneval/overall`, `eval_reward`, ...).
        mode: 'max' (the highest value wins) or 'min' (the lowest wins).
        output_dir: where `best_step.json` goes (next to the weights `save_model` writes).
        tolerance: a later eval takes over when it reads better than the best reading so far minus this (max
            mode; plus it in min mode). 0: strictly better only. Set it to about the eval's standard error
            so that noise alone cannot send the run back to an earlier, less trained step.
    """

    def __init__(self, metric: str, mode: str, output_dir: str, tolerance: float = 0.0) -> None:
        self.metric = metric
        self.mode = mode
        self.output_dir = output_dir
        self.tolerance = tolerance
        self.step: int | None = None  # the kept step and its reading
        self.value: float | None = None
        self.peak: tuple[int, float] | None = None  # the best reading so far (step, value)
        self.weights: dict[str, torch.Tensor] | None = None
        self.history: list[tuple[int, float | None]] = []  # (step, value) of every eval compared

    def update(self, model: torch.nn.Module, step: int, logs: dict | None, accelerator) -> None:
        """After the in-loop eval of `step`: `logs` on the main process (None elsewhere). Call on every process."""
        value = logs.get(self.metric) if logs is not None else None
        value = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        # the main process scored the eval: every replica takes its value, so all keep the same copy
        value = broadcast(torch.tensor([value], dtype=torch.float64, device=accelerator.device)).item()
        self.history.append((step, value if math.isfinite(value) else None))
        if not math.isfinite(value):
            return
        if self.peak is not None:
            peak = self.peak[1]
            if self.mode == "max":
                takes_over, new_peak = value > peak - self.tolerance, value > peak
            else:
                takes_over, new_peak = value < peak + self.tolerance, value < peak
            if new_peak:
                self.peak = (step, value)
            if not takes_over:
                return  # ties (and, with a tolerance, anything further off) keep the earlier step
        else:
            self.peak = (step, value)
        self.step, self.value = step, value
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            if self.weights is None:
                self.weights = {name: p.detach().to("cpu", copy=True) for name, p in trainable.items()}
            else:
                for name, p in trainable.items():
                    self.weights[name].copy_(p.detach())

    def finish(self, model: torch.nn.Module, state, is_main_process: bool) -> None:
        """End of training: put the best step's weights back into `model`, record and announce the step."""
        if self.weights is None:
            if is_main_process:
                logger.warning(
                    "keep_best: no in-loop eval logged %s (every value was None): the last weights are kept",
                    self.metric,
                )
            return
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.weights:
                    p.copy_(self.weights[name].to(p.device))
        state.best_metric, state.best_global_step = self.value, self.step
        if not is_main_process:
            return
        last_step, last_value = self.history[-1]
        record = {
            "metric": self.metric,
            "mode": self.mode,
            "best_step": self.step,
            "best_value": self.value,
            "tolerance": self.tolerance,
            "peak_step": self.peak[0],
            "peak_value": self.peak[1],
            "last_step": last_step,
            "last_value": last_value,
            "evals": [{"step": step, "value": value} for step, value in self.history],
        }
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, BEST_STEP_FILE), "w") as f:
            json.dump(record, f, indent=2)
        print(
            f"rlhf-img: keep_best: the weights of step {self.step} ({describe_kept(record)}) are the ones saved "
            f"({BEST_STEP_FILE})",
            flush=True,
        )
