"""In-loop evaluation: the same prompts and the same seeds every `eval_every` steps, so the dashboard shows one
picture changing and eval curves free of sampling noise across steps.

Every process samples the same images in lockstep (ZeRO-3 / FSDP weights are sharded, so all take part; under
DDP this costs no extra wall time), under no_grad, with the model in eval mode, through `rlhf-img eval`'s own
sampling path (`eval.evaluate`); the main process scores and logs them. Its random generator is seeded from
`eval_seed`, so it never draws from (or moves) the training's random state -- a run with in-loop eval trains
exactly as one without.

Logged (through transformers' logger, so to every dashboard TRL reports to and to `trainer_state.json`, as
`eval_*` keys that wandb / TensorBoard show as `eval/...`):

- `eval/rewards/<name>/mean` per reward and `eval/reward` (their weighted sum, TRL's `reward`);
- `eval/geneval/<tag>` and `eval/geneval/overall` (strict accuracy) when the prompts carry GenEval metadata
  and a GenEval scorer is at hand (a loaded geneval/shapes_geneval reward, or the shapes world's detector);
- `eval/grid`: one row per prompt, `eval_images_per_prompt` columns, also saved as
  `output_dir/eval/step_XXXXXX.png`.

With `keep_best`, each eval's `best_metric` is compared and the best step's weights are the ones left in the
model when training ends (best_weights.py).
"""

from __future__ import annotations

import json
import logging
import math
import os

import torch
import transformers
from transformers import TrainerCallback
from trl.models import unwrap_model_for_generation

from .best_weights import BestWeights, resolve_best_metric
from .dashboards import log_image
from .eval.evaluate import evaluate_policy, generate_images
from .eval.prompts import PROMPT_SETS, load_prompt_set
from .fsdp import unsharded_root
from .geneval_rules import TAGS
from .images import captioned_grid
from .rewards.geneval import GenEvalScorer, build_scorer

logger = logging.getLogger(__name__)


def load_eval_prompts(source: str, max_prompts: int | None = None) -> list[dict]:
    """Rows (`prompt` plus any metadata) of a named set or a prompt file; `max_prompts` of them (`pick_spread`)."""
    if source in PROMPT_SETS:
        rows = load_prompt_set(source)
    elif not os.path.splitext(source)[1]:
        raise ValueError(f"eval_prompts: {source!r} is neither a named set ({', '.join(PROMPT_SETS)}) nor a file")
    elif not os.path.isfile(source):
        raise FileNotFoundError(f"eval_prompts: file not found: {source}")
    elif source.endswith(".jsonl"):  # read as is: nested GenEval clauses keep their exact structure
        rows = []
        with open(source) as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"eval_prompts: {source}:{number}: not JSON ({error.msg})") from None
                    if not isinstance(rows[-1], dict) or "prompt" not in rows[-1]:
                        raise ValueError(f"eval_prompts: {source}:{number}: no 'prompt' key")
    else:
        from .data import load_prompt_dataset

        rows = load_prompt_dataset(source).to_list()
    if not rows:
        raise ValueError(f"eval_prompts: {source} holds no prompts")
    if max_prompts is not None and max_prompts < len(rows):
        rows = pick_spread(rows, max_prompts)
    return rows


def pick_spread(rows: list[dict], count: int) -> list[dict]:
    """`count` rows, in file order: with GenEval tags, taken from each tag in turn (so every tag is in the table
    and `overall`, a mean over tags, means the same as on the full set); otherwise evenly spaced."""
    if not all("tag" in row for row in rows):
        return [rows[i * len(rows) // count] for i in range(count)]
    by_tag: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_tag.setdefault(row["tag"], []).append(index)
    picked: list[int] = []
    for turn in range(len(rows)):
        for indices in by_tag.values():
            if turn < len(indices) and len(picked) < count:
                picked.append(indices[turn])
    return [rows[i] for i in sorted(picked)]


def has_geneval_metadata(rows: list[dict]) -> bool:
    return all("tag" in row and "include" in row for row in rows)


def find_scorer(rewards, source: str) -> GenEvalScorer | None:
    """A loaded GenEval reward's scorer; else the shapes world's exact detector for the shapes prompt sets."""
    for reward in rewards:
        scorer = getattr(getattr(reward, "fn", None), "scorer", None)
        if isinstance(scorer, GenEvalScorer):
            return scorer
    return build_scorer("shapes") if source in PROMPT_SETS else None  # the named sets are the shapes world's


class InLoopEvaluation(TrainerCallback):
    """Evaluates `trainer`'s policy at step 0 and after every `args.eval_every` optimizer steps."""

    def __init__(self, trainer) -> None:
        args = trainer.args
        self.trainer = trainer
        self.rows = load_eval_prompts(args.eval_prompts, args.eval_max_prompts)
        self.images_per_prompt = args.eval_images_per_prompt
        self.seed = args.eval_seed
        self.every = args.eval_every
        self.scorer = find_scorer(trainer.image_rewards, args.eval_prompts) if has_geneval_metadata(self.rows) else None
        if has_geneval_metadata(self.rows) and self.scorer is None:
            logger.warning(
                "in-loop eval: %s has GenEval metadata but no GenEval scorer is loaded (add a `geneval` "
                "reward to get the per-tag table); logging the rewards only",
                args.eval_prompts,
            )
        # prompts per sampling call: `per_device_eval_batch_size` images. Not derived from the training batch or the
        # process count: the chunking seeds the generator, so it must stay put for the images to stay put
        self.batch_prompts = max(1, args.per_device_eval_batch_size // self.images_per_prompt)
        self.last_step = -1
        self.best = None  # keep_best: the best step's weights (best_weights.py)
        if args.keep_best:
            metric = resolve_best_metric(args.best_metric, self.logged_keys())
            self.best = BestWeights(metric, args.best_metric_mode, args.output_dir, args.best_metric_tolerance)

    def logged_keys(self) -> list[str]:
        """The keys each eval logs (`metrics`)."""
        keys = ["eval_reward", *(f"eval_rewards/{name}/mean" for name in self.trainer.image_rewards.names)]
        if self.scorer is not None:
            tags = {row["tag"] for row in self.rows}
            keys += [f"eval_geneval/{tag}" for tag in TAGS if tag in tags] + ["eval_geneval/overall"]
        return keys

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:  # a resumed run evaluated its checkpoint's step before saving it
            self.evaluate(0)
        elif self.best is not None and self.trainer.accelerator.is_main_process:
            logger.warning(
                "keep_best: resumed at step %d: only the in-loop evals from here on compete (the best "
                "weights of the run before it are not in the checkpoint)",
                state.global_step,
            )

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.evaluate(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.evaluate(state.global_step)  # the final policy, when max_steps is not a multiple of eval_every
        if self.best is not None:  # keep_best: the best step's weights back in the model, before the final save
            self.best.finish(self.trainer.model, state, self.trainer.accelerator.is_main_process)

    def evaluate(self, step: int) -> dict[str, float] | None:
        """Evaluate the current policy (every process samples, in lockstep, as sharded weights need); the main
        process scores and logs. Returns the logged values on the main process, else None."""
        trainer, accelerator = self.trainer, self.trainer.accelerator
        if step == self.last_step:
            return None
        self.last_step = step
        model = trainer.model
        was_training = model.training
        model.eval()
        try:
            with (
                torch.no_grad(),
                trainer._no_checkpointing(),
                unwrap_model_for_generation(
                    trainer.model_wrapped, accelerator, gather_deepspeed3_params=trainer.args.ds3_gather_for_generation
                ) as unwrapped,
                unsharded_root(unwrapped),  # FSDP2: as for the trainer's rollouts (fsdp.py)
                accelerator.autocast(),
            ):
                if self.scorer is not None:
                    table, _, images = evaluate_policy(
                        trainer.policy,
                        self.rows,
                        self.scorer,
                        self.images_per_prompt,
                        trainer.sampling,
                        self.seed,
                        batch_prompts=self.batch_prompts,
                        keep_images=True,
                        progress=False,
                        model=unwrapped,
                    )
                else:
                    table = None
                    images = generate_images(
                        trainer.policy,
                        self.rows,
                        self.images_per_prompt,
                        trainer.sampling,
                        self.seed,
                        batch_prompts=self.batch_prompts,
                        progress=False,
                        model=unwrapped,
                    )
        finally:
            model.train(was_training)
        if not accelerator.is_main_process:
            if self.best is not None:
                self.best.update(trainer.model, step, None, accelerator)  # takes the main process's value
            return None
        rows = [row for row in self.rows for _ in range(self.images_per_prompt)]
        prompts = [row["prompt"] for row in rows]
        columns = {key: [row.get(key) for row in rows] for key in rows[0] if key != "prompt"}
        with torch.no_grad():
            rewards = trainer.image_rewards.score(prompts, images.to(accelerator.device), columns)
        logs = self.metrics(rewards, table)
        should_log = trainer.control.should_log  # logging resets it: the step's training log must still happen
        transformers.Trainer.log(trainer, dict(logs))  # not TRL's log: that would flush the training metrics
        trainer.control.should_log = should_log
        self.log_grid(images, prompts, rewards, step)
        if self.best is not None:
            self.best.update(trainer.model, step, logs, accelerator)
        return logs

    def metrics(self, rewards: torch.Tensor, table: dict[str, float] | None) -> dict[str, float]:
        logs = {}
        reward_set = self.trainer.image_rewards
        for index, name in enumerate(reward_set.names):
            logs[f"eval_rewards/{name}/mean"] = _finite_or_none(torch.nanmean(rewards[:, index]).item())
        logs["eval_reward"] = _finite_or_none(torch.nanmean(reward_set.weighted_totals(rewards)).item())
        if table is not None:
            for tag in (*TAGS, "overall"):
                if tag in table:
                    logs[f"eval_geneval/{tag}"] = table[tag]
        return logs

    def log_grid(self, images: torch.Tensor, prompts: list[str], rewards: torch.Tensor, step: int) -> None:
        totals = self.trainer.image_rewards.weighted_totals(rewards).tolist()
        captions = [f"{prompt} | r={total:.3g}" for prompt, total in zip(prompts, totals)]
        grid = captioned_grid(images, captions, columns=self.images_per_prompt)
        folder = os.path.join(self.trainer.args.output_dir, "eval")
        os.makedirs(folder, exist_ok=True)
        grid.save(os.path.join(folder, f"step_{step:06d}.png"))
        if self.trainer.args.report_to and self.trainer.args.report_to != ["none"]:
            log_image(self.trainer, "eval/grid", grid, " || ".join(captions[:: self.images_per_prompt]), step)


def _finite_or_none(value: float) -> float | None:
    """JSON loggers cannot take NaN (TRL's convention: None when no image was scored)."""
    return value if math.isfinite(value) else None
