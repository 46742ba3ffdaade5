"""Checkpoints that are safe to resume from: a completion marker, and `resume_from_checkpoint` resolution.

transformers writes `checkpoint-N/` file by file (model, optimizer, scheduler, RNG state, trainer state), so a
run killed while saving leaves a folder that looks like a checkpoint but is not one, and
`get_last_checkpoint` would pick it as the latest. The trainer therefore writes `MARKER` into the folder
after everything else is on disk (and before older checkpoints are rotated away), and resuming only ever
picks folders that carry it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

logger = logging.getLogger(__name__)

MARKER = "checkpoint_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_LATEST = {"true", "latest", "last"}
_NONE = {"", "false", "none", "no"}


def is_complete(folder: str) -> bool:
    """True when `folder` was fully written by a save that finished (it carries the marker)."""
    return os.path.isfile(os.path.join(folder, MARKER))


def mark_complete(folder: str, step: int) -> None:
    """Write the marker last, through a temporary file and a rename, so it is never half-written itself."""
    temporary = os.path.join(folder, MARKER + ".tmp")
    with open(temporary, "w") as f:
        json.dump({"global_step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, os.path.join(folder, MARKER))


def prepare_folder(folder: str) -> None:
    """Before saving into `folder`: drop the marker (a re-save of the same step is incomplete until it ends) and
    clear what a killed save left there, so no stale file outlives the new save."""
    if os.path.isdir(folder):
        if is_complete(folder):
            os.remove(os.path.join(folder, MARKER))
        else:
            shutil.rmtree(folder)


def checkpoints(output_dir: str) -> list[tuple[int, str, bool]]:
    """`(step, folder, complete)` of every `checkpoint-N` folder under `output_dir`, by step."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path, is_complete(path)))
    return sorted(found)


def latest_complete(output_dir: str) -> str | None:
    """The newest complete checkpoint under `output_dir`; logs every newer incomplete one it passes over."""
    for step, path, complete in reversed(checkpoints(output_dir)):
        if complete:
            return path
        logger.warning("skipping %s: incomplete (no %s; the run stopped while saving it)", path, MARKER)
    return None


def resolve_resume(value: str | bool | None, output_dir: str) -> str | None:
    """`resume_from_checkpoint` as given (a path, True / 'true' / 'latest', or None / 'false') -> a complete
    checkpoint folder or None. Raises `ValueError` with one line naming what is wrong."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in _NONE):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in _LATEST):
        path = latest_complete(output_dir)
        if path is None:
            found = checkpoints(output_dir)
            detail = (
                f"only incomplete ones ({', '.join(os.path.basename(p) for _, p, _ in found)})" if found else "none"
            )
            raise ValueError(f"resume_from_checkpoint=true: no complete checkpoint-N folder in {output_dir} ({detail})")
        return path
    path = str(value)
    if not os.path.isdir(path):
        raise ValueError(f"resume_from_checkpoint: {path} is not a folder")
    if not is_complete(path):
        latest = latest_complete(os.path.dirname(os.path.abspath(path)))
        hint = f"; the latest complete one is {latest}" if latest else ""
        raise ValueError(
            f"resume_from_checkpoint: {path} is incomplete (no {MARKER}: the run stopped while saving it, "
            f"or it was not written by rlhf-img){hint}"
        )
    return path


def save_marked_checkpoint(trainer, save, model, trial) -> None:
    """Run the trainer's own checkpoint save (`save`, i.e. `super()._save_checkpoint`), then mark the folder
    complete, then rotate old checkpoints (`save_total_limit`) -- in that order, so a kill at any point leaves
    an earlier complete checkpoint to resume from."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

    args = trainer.args
    run_dir = trainer._get_output_dir(trial=trial)
    folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
    if args.should_save:
        prepare_folder(folder)
    trainer.accelerator.wait_for_everyone()
    limit = args.save_total_limit
    args.save_total_limit = None  # transformers rotates inside its save: hold that until the marker is written
    try:
        save(model, trial)
    finally:
        args.save_total_limit = limit
    trainer.accelerator.wait_for_everyone()  # every rank's files (e.g. its RNG state) are on disk
    if args.should_save:
        mark_complete(folder, trainer.state.global_step)
        rotate_checkpoints(run_dir, limit, trainer.state.best_model_checkpoint, use_mtime=True)
