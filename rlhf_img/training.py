"""`rlhf-img train`: run a prepared recipe (see `recipes.prepare_training`), save it, print a short summary."""

from __future__ import annotations

import math
import os
import sys
import time

from .best_weights import KeepBestError
from .object_credit import ObjectCreditError
from .rewards import RewardError
from .trainer import ImageGRPOTrainer


def reward_summary(log_history: list[dict]) -> str:
    """The first and last logged mean reward, or what went wrong when no step scored an image.

    A step where no reward scored any image logs `reward: None` (TRL's `log` turns the NaN mean into None for
    the JSON loggers); NaN, a missing `reward` or a non-number count as not scored too."""
    logged = [entry for entry in log_history if "reward" in entry]
    scored = [entry for entry in logged if _is_number(entry["reward"])]
    if not logged:
        return "no reward was logged"
    if not scored:
        names = sorted(
            {
                key[len("rewards/") : -len("/mean")]
                for entry in logged
                for key in entry
                if key.startswith("rewards/") and key.endswith("/mean")
            }
        )
        which = f" ({', '.join(map(repr, names))})" if names else ""
        return (
            f"no image was scored in any of the {len(logged)} logged steps (every reward{which} returned "
            "NaN/None): nothing was learned; check the rewards"
        )
    first, last = scored[0], scored[-1]
    unscored = len(logged) - len(scored)
    note = f"; {unscored} logged step(s) had no scored image" if unscored else ""
    return f"reward {first['reward']:.4g} (step {first['step']}) -> {last['reward']:.4g} (step {last['step']}){note}"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _resume_hint(output_dir: str) -> str:
    """Where a stopped run can go on from: the latest complete checkpoint (a reward fault stops the run between
    saves, so the checkpoints already written are untouched)."""
    from .resume import latest_complete

    latest = latest_complete(output_dir)
    if latest is None:
        return "no checkpoint was saved (save_strategy: steps and save_steps: N keep one to resume from)"
    return f"the last checkpoint, {latest}, is intact: fix the reward and resume with --resume_from_checkpoint {latest}"


def _rank_tag(trainer) -> str:
    """'' on the main process, ' on rank r' on the others. Errors print on every rank that hit them (a reward can
    fail on one rank's images only, and the launcher then stops the other ranks before they report); the summary
    prints on the main process only."""
    accelerator = trainer.accelerator
    return "" if accelerator.is_main_process else f" on rank {accelerator.process_index}"


def too_few_prompts(trainer) -> str | None:
    """Why the first generation batch can never fill, or None. TRL's sampler deals prompts in whole generation
    batches of `generation_batch_size / num_generations` distinct prompts and drops the remainder, so a dataset
    with fewer prompts than that has an empty epoch: the Trainer then "trains" 0 steps and returns normally."""
    dataset, args = trainer.train_dataset, trainer.args
    if not hasattr(dataset, "__len__"):
        return None  # an iterable dataset: its length is not known ahead
    needed = args.generation_batch_size // trainer.num_generations
    if len(dataset) >= needed:
        return None
    processes = trainer.accelerator.num_processes
    return (
        f"the dataset has {len(dataset)} prompts but one generation batch takes {needed} distinct prompts "
        f"(per_device_train_batch_size {args.per_device_train_batch_size} x {processes} process(es) x "
        f"steps_per_generation {args.steps_per_generation} / num_generations {trainer.num_generations}): lower "
        "per_device_train_batch_size or steps_per_generation, launch fewer processes, or add prompts; nothing "
        "was trained"
    )


def unjoined_processes(trainer) -> str | None:
    """Why the launched processes would each train alone, or None. A launcher can start N processes that
    accelerate then runs undistributed (e.g. a GPU config such as `fsdp.yaml` on a machine without GPUs and
    without `use_cpu`): every process would train and save the same run on its own."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    joined = trainer.accelerator.num_processes
    if launched <= 1 or joined == launched:
        return None
    return (
        f"{launched} processes were launched but accelerate runs {joined} (distributed type "
        f"{trainer.accelerator.distributed_type}): each would train alone; on a CPU set use_cpu: true (gloo), "
        "with GPUs check the launch config"
    )


def train(args, model_args, rewards, dataset, policy, peft_config) -> int:
    """Train, save the model and `trainer_state.json` to `args.output_dir`; 1 if a reward broke mid-run or nothing
    could be trained (a run that trains 0 steps never ends as a success)."""
    try:
        trainer = ImageGRPOTrainer(policy, args, dataset, reward_funcs=rewards, peft_config=peft_config)
    except (KeepBestError, ObjectCreditError) as error:  # e.g. a best_metric the eval does not log: one line
        print(f"rlhf-img: error: {error}", file=sys.stderr)
        return 2
    problem = unjoined_processes(trainer) or too_few_prompts(trainer)
    if problem is not None:
        if trainer.accelerator.is_main_process and os.environ.get("RANK", "0") == "0":  # unjoined: all are "main"
            print(f"rlhf-img: error: {problem}", file=sys.stderr)
        return 1
    start = time.time()
    try:
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    except RewardError as error:  # a user's reward broke, hung or scored nothing: name it, skip the traceback
        print(
            f"rlhf-img: error{_rank_tag(trainer)}: {' '.join(str(error).split())}; {_resume_hint(args.output_dir)}",
            file=sys.stderr,
        )
        return 1
    if trainer.state.global_step == 0 and args.max_steps != 0:
        if trainer.accelerator.is_main_process:  # e.g. a launcher that gave each process an empty shard
            prompts = len(dataset) if hasattr(dataset, "__len__") else "an iterable of"
            print(
                f"rlhf-img: error: trained 0 steps (max_steps {args.max_steps}, {prompts} prompts, "
                f"{trainer.accelerator.num_processes} process(es)): check the launcher, max_steps, "
                "per_device_train_batch_size and num_generations; nothing was saved",
                file=sys.stderr,
            )
        return 1
    trainer.save_state()  # trainer_state.json: the full log history; first, so push_to_hub uploads it too
    trainer.save_model(args.output_dir)
    trainer.create_model_card()  # README.md: rlhf-img's model card (model_card.py), main process only
    if trainer.accelerator.is_main_process:
        print(
            f"rlhf-img: trained {trainer.state.global_step} steps in {time.time() - start:.0f}s; "
            f"saved to {args.output_dir}"
        )
        print(f"rlhf-img: {reward_summary(trainer.state.log_history)}")
    end_processes(trainer)
    return 0


def end_processes(trainer) -> None:
    """Leave together: every rank waits for the others, then the process group is torn down before the
    interpreter exits. A rank that exits while a peer is still in a collective, or with DeepSpeed's and gloo's
    communication threads alive, can abort ("terminate called without an active exception", exit -6) after a
    run that trained and saved."""
    import torch.distributed as dist

    trainer.accelerator.wait_for_everyone()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
