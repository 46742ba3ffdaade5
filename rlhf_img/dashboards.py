"""Images on the dashboards TRL already reports to (wandb, TensorBoard); scalars go through TRL's `log`."""

from __future__ import annotations

import numpy as np
from PIL import Image
from transformers.integrations import TensorBoardCallback


def log_image(trainer, key: str, image: Image.Image, caption: str, step: int) -> list[str]:
    """Send `image` to every enabled dashboard; returns the names of those that took it."""
    report_to = trainer.args.report_to or []
    sent = []
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            wandb.log({key: wandb.Image(image, caption=caption), "train/global_step": step})
            sent.append("wandb")
    if "tensorboard" in report_to:
        for callback in trainer.callback_handler.callbacks:
            writer = getattr(callback, "tb_writer", None) if isinstance(callback, TensorBoardCallback) else None
            if writer is not None:
                writer.add_image(key, np.asarray(image), step, dataformats="HWC")
                writer.add_text(f"{key}/captions", caption, step)
                sent.append("tensorboard")
    return sent
