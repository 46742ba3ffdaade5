"""Guards against silent training failures: runs that go on for hours learning nothing without an error.

The trainer feeds `TrainingGuards` each rollout batch's gathered rewards and zero-spread flags
(`check_rollouts`) and each logged step's `grad_norm` (`check_log`). A rollout batch that no reward scored
stops the run (`NoScoreError`, one line naming the rewards): every advantage would be 0. The other
conditions can be legitimate for a while, so each warns once on the console after `patience` consecutive
occurrences and keeps a streak counter on the dashboards (`guards/...`). Patience 0 turns a guard off.

The streaks are saved in checkpoints (`trainer_state.json`, `stateful_callbacks`) and restored on resume, so
a resumed run logs the same counters as an uninterrupted one. docs/troubleshooting.md lists each
guard, what it prints and how to tune it.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .rewards import RewardError

logger = logging.getLogger(__name__)


class NoScoreError(RewardError):
    """No reward scored any image of `no_score_patience` consecutive rollout batches."""


def unscored_counts(rewards_per_func: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """`rewards/{name}/unscored`: images of the batch `(N, R)` each reward gave no score (NaN; None and inf
    arrive as NaN), so a reward that silently stopped scoring shows on the dashboards."""
    unscored = (~torch.isfinite(rewards_per_func)).sum(dim=0).tolist()
    return {f"rewards/{name}/unscored": float(count) for name, count in zip(names, unscored)}


class TrainingGuards(TrainerCallback, ExportableState):
    """Streaks of suspicious rollout batches / logged steps, with one console warning per condition.

    Args:
        reward_names: the rewards' display names, in the column order of the rewards tensor.
        no_score_patience: stop after this many consecutive batches that no reward scored (0: only warn).
        zero_spread_patience: warn after this many consecutive batches where every group had zero reward
            spread (`frac_reward_zero_std` = 1: all advantages 0).
        constant_reward_patience: warn after this many consecutive batches where a reward could not rank any
            two images (the same value for every image it scored, or no score at all).
        zero_grad_norm_patience: warn after this many consecutive logged steps with `grad_norm` exactly 0.
        is_main_process: only the main process prints (every process counts, so all stop together).
    """

    def __init__(
        self,
        reward_names: Sequence[str],
        no_score_patience: int = 1,
        zero_spread_patience: int = 5,
        constant_reward_patience: int = 5,
        zero_grad_norm_patience: int = 3,
        is_main_process: bool = True,
    ) -> None:
        for key, value in (
            ("no_score_patience", no_score_patience),
            ("zero_spread_patience", zero_spread_patience),
            ("constant_reward_patience", constant_reward_patience),
            ("zero_grad_norm_patience", zero_grad_norm_patience),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{key} must be an int >= 0 (0: off), got {value!r}")
        self.reward_names = list(reward_names)
        self.no_score_patience = no_score_patience
        self.zero_spread_patience = zero_spread_patience
        self.constant_reward_patience = constant_reward_patience
        self.zero_grad_norm_patience = zero_grad_norm_patience
        self.is_main_process = is_main_process
        self.no_score_streak = 0
        self.zero_spread_streak = 0
        self.constant_reward_streaks = {name: 0 for name in self.reward_names}
        self.zero_grad_norm_streak = 0
        self._warned: set[str] = set()

    # ------------------------------------------------------------------------------------- checks
    def check_rollouts(self, rewards_per_func: torch.Tensor, is_std_zero: torch.Tensor, step: int) -> dict[str, float]:
        """One training rollout batch: rewards `(N, R)` (NaN = no score) and TRL's zero-std flags `(N,)`, gathered
        over processes. Returns the metrics to log; raises `NoScoreError` when the batch had no scored image."""
        scored = torch.isfinite(rewards_per_func)  # (N, R)
        metrics = unscored_counts(rewards_per_func, self.reward_names)

        if bool(scored.any()):
            self.no_score_streak = 0
        else:
            self.no_score_streak += 1
            names = ", ".join(repr(name) for name in self.reward_names)
            what = (
                f"no image was scored by any reward ({names} returned NaN/None/inf for all "
                f"{rewards_per_func.size(0)} images)"
            )
            if self.no_score_patience and self.no_score_streak >= self.no_score_patience:
                batches = "" if self.no_score_streak == 1 else f" in {self.no_score_streak} consecutive rollout batches"
                raise NoScoreError(
                    f"step {step}: {what}{batches}: every advantage is 0, so nothing can be learned; "
                    "check the reward(s) (no_score_patience tunes this stop)"
                )
            self._warn_once(
                "no_score",
                "step %d: %s: every advantage is 0, so nothing is learned from these images; check the rewards",
                step,
                what,
            )

        all_zero = bool(is_std_zero.numel()) and bool(is_std_zero.all()) and bool(scored.any())
        self.zero_spread_streak = self.zero_spread_streak + 1 if all_zero else 0
        metrics["guards/zero_spread_streak"] = float(self.zero_spread_streak)
        if self.zero_spread_patience and self.zero_spread_streak >= self.zero_spread_patience:
            self._warn_once(
                "zero_spread",
                "step %d: every group of the last %d rollout batches had zero reward spread (frac_reward_zero_std = 1): "
                "all advantages are 0 and nothing is learned; usual causes: a reward that cannot tell one prompt's "
                "images apart, a prompt set far too easy or too hard, a too low temperature (zero_spread_patience "
                "tunes this warning)",
                step,
                self.zero_spread_streak,
            )

        for index, name in enumerate(self.reward_names):
            values = rewards_per_func[:, index][scored[:, index]]
            constant = values.numel() == 0 or bool((values == values[0]).all())
            self.constant_reward_streaks[name] = self.constant_reward_streaks[name] + 1 if constant else 0
            streak = self.constant_reward_streaks[name]
            metrics[f"guards/constant_reward_streak/{name}"] = float(streak)
            if self.constant_reward_patience and streak >= self.constant_reward_patience:
                value = "no score" if values.numel() == 0 else f"the same value ({values[0].item():.6g})"
                self._warn_once(
                    f"constant:{name}",
                    "step %d: reward %r gave %s to every image of the last %d rollout batches: it cannot rank images, "
                    "so it adds nothing to the advantages; check what it receives (images in [0, 1], prompts, "
                    "columns) and its kwargs (constant_reward_patience tunes this warning)",
                    step,
                    name,
                    value,
                    streak,
                )
        return metrics

    def check_log(self, logs: dict[str, Any], step: int) -> dict[str, float]:
        """A logged step: counts `grad_norm` == 0 (an update that changes nothing). Returns metrics to add to
        `logs` (none for logs without a grad norm, e.g. evaluation)."""
        grad_norm = logs.get("grad_norm")
        if not isinstance(grad_norm, (int, float)) or isinstance(grad_norm, bool):
            return {}
        self.zero_grad_norm_streak = self.zero_grad_norm_streak + 1 if grad_norm == 0 else 0
        if self.zero_grad_norm_patience and self.zero_grad_norm_streak >= self.zero_grad_norm_patience:
            self._warn_once(
                "zero_grad_norm",
                "step %d: grad_norm was 0 at the last %d logged steps: the updates change nothing; usual causes: all "
                "advantages 0 (see frac_reward_zero_std), a loss that reaches no trainable parameter (LoRA target "
                "modules), top_k/top_p leaving one choice per token (log-prob 0, no gradient) "
                "(zero_grad_norm_patience tunes this warning)",
                step,
                self.zero_grad_norm_streak,
            )
        return {"guards/zero_grad_norm_streak": float(self.zero_grad_norm_streak)}

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        if self.is_main_process:
            logger.warning(message, *args)

    # ---------------------------------------------------------------------- checkpoint / resume
    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "reward_names": self.reward_names,
                "no_score_patience": self.no_score_patience,
                "zero_spread_patience": self.zero_spread_patience,
                "constant_reward_patience": self.constant_reward_patience,
                "zero_grad_norm_patience": self.zero_grad_norm_patience,
                "is_main_process": self.is_main_process,
            },
            "attributes": {
                "no_score_streak": self.no_score_streak,
                "zero_spread_streak": self.zero_spread_streak,
                "constant_reward_streaks": dict(self.constant_reward_streaks),
                "zero_grad_norm_streak": self.zero_grad_norm_streak,
            },
        }

    def on_train_begin(self, args, state, control, **kwargs):
        """Resume: take the streaks saved in the checkpoint's `trainer_state.json` (a fresh run finds zeros)."""
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, list):  # transformers keeps a list when several callbacks share a class name
            saved = saved[-1] if saved else None
        attributes = saved.get("attributes", {}) if isinstance(saved, dict) else {}
        self.no_score_streak = int(attributes.get("no_score_streak", self.no_score_streak))
        self.zero_spread_streak = int(attributes.get("zero_spread_streak", self.zero_spread_streak))
        self.zero_grad_norm_streak = int(attributes.get("zero_grad_norm_streak", self.zero_grad_norm_streak))
        for name, streak in (attributes.get("constant_reward_streaks") or {}).items():
            if name in self.constant_reward_streaks:
                self.constant_reward_streaks[name] = int(streak)
        return control
