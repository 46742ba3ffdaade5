"""`rlhf-img quickstart` end to end on the shipped checkpoint, shrunk to a few seconds by recipe overrides: the
before/after tables, the summary, the plots and rlhf-img's model card next to the trained adapter."""

import json
import os

import pytest
from conftest import REPO

from rlhf_img.cli import main


@pytest.mark.timeout(300)
def test_quickstart_writes_its_summary_plots_and_model_card(tmp_path, capsys, monkeypatch):
    from matplotlib.axes import Axes

    labels = set()  # the label of every curve the plots draw
    plot = Axes.plot

    def recording_plot(self, *args, **kwargs):
        labels.add(kwargs.get("label"))
        return plot(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", recording_plot)
    out = tmp_path / "quickstart"
    code = main(
        [
            "quickstart",
            "--checkpoint",
            os.path.join(REPO, "checkpoints", "shapes-tiny"),
            "--recipe",
            os.path.join(REPO, "recipes", "shapes-grpo.yaml"),
            "--output_dir",
            str(out),
            "--images_per_prompt",
            "1",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "16",
            "--eval_every",
            "1",
            "--eval_max_prompts",
            "2",
            "--eval_images_per_prompt",
            "2",
            "--per_device_eval_batch_size",
            "4",
            "--log_images_every",
            "0",
            "--logging_steps",
            "1",
            "--disable_tqdm",
            "true",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "held-out, before GRPO (strict):" in printed and "held-out, after GRPO (strict):" in printed
    assert "saved weights: step" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["held_out_prompts"] == 49 and summary["images_per_prompt"] == 1
    assert set(summary["before"]) == set(summary["after"]) and "overall" in summary["after"]
    assert [e["step"] for e in summary["in_loop_eval"]] == [0, 1, 2]
    assert summary["saved_step"]["step"] in (0, 1, 2) and summary["saved_step"]["why"].startswith("keep_best: ")
    for name in ("reward_curve.png", "dashboard.png", "eval_progress.png", "samples_before.png", "samples_after.png"):
        assert (out / name).stat().st_size > 0, name
    # the dashboard's curves, KL included (the recipe's beta is 0.02)
    assert {"train batches", "token entropy (nats)", "KL to the reference (nats/token; beta > 0)"} <= labels
    card = (out / "grpo" / "README.md").read_text()
    assert "library_name: rlhf-img" in card and "rlhf-img's GRPO" in card  # ours, not peft's template
