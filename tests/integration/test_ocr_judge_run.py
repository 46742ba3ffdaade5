"""The shipped recipe with real-weight and real-server rewards, end to end: `recipes/tiny-random-ocr-judge.yaml`
(the `ocr` reward on PP-OCRv4 + a `vlm_judge` against `transformers serve` on the tiny judge that
`rlhf-img create-tiny-judge` writes) trains 2 steps and logs a curve per reward to TensorBoard; killing the
server mid-run stops the run with one line naming the reward, never a run of zeros."""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO
from vlm_server import serve_tiny_vlm

from rlhf_img.cli import main

pytest.importorskip("rapidocr_onnxruntime", reason="CI installs rlhf-img[ocr]")
pytest.importorskip("openai", reason="CI installs rlhf-img[judge]")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RECIPE = os.path.join(REPO, "recipes", "tiny-random-ocr-judge.yaml")


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory):
    """A server of this module's own: the last test kills it."""
    root = tmp_path_factory.mktemp("judge")
    assert main(["create-tiny-judge", str(root / "tiny-judge")]) == 0  # what the recipe's header says to run
    with serve_tiny_vlm(str(root / "tiny-judge"), str(root / "serve.log")) as server:
        yield server


def shipped_recipe_for(server, tmp_path, **keys) -> str:
    """The shipped recipe, pointed at `server` (its port is free, not 8765) with its paths made absolute."""
    with open(RECIPE) as f:
        recipe = yaml.safe_load(f)
    judge = next(entry for entry in recipe["rewards"] if entry["name"] == "vlm_judge")
    judge["kwargs"].update(base_url=server.base_url, model=server.model)
    recipe.update(
        model_name_or_path=os.path.join(REPO, "checkpoints", "tiny-random-causal-vq"),
        dataset=os.path.join(REPO, "recipes", "prompts", "text-rendering-train.txt"),
        output_dir=str(tmp_path / "out"),
        **keys,
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_shipped_ocr_judge_recipe_trains_two_steps_with_a_curve_per_reward(judge_server, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = shipped_recipe_for(judge_server, tmp_path, report_to="tensorboard")
    before = judge_server.completions_logged()
    assert main(["train", recipe]) == 0
    assert judge_server.completions_logged() > before  # the judge really answered
    (event_file,) = glob.glob(str(tmp_path / "out" / "runs" / "**" / "events.out.tfevents.*"), recursive=True)
    events = EventAccumulator(event_file, size_guidance={"scalars": 0})
    events.Reload()
    for tag in ("train/rewards/ocr/mean", "train/rewards/vlm_judge/mean"):
        steps = [event.step for event in events.Scalars(tag)]
        assert steps == [1, 2], tag
    judged = [event.value for event in events.Scalars("train/rewards/vlm_judge/mean")]
    assert all(0.0 < value <= 1.0 for value in judged)  # a digit / 9: the tiny judge never answers 0 here


def test_killing_the_judge_server_mid_run_stops_it_with_one_line_naming_the_reward(judge_server, tmp_path):
    recipe = shipped_recipe_for(judge_server, tmp_path, max_steps=200, disable_tqdm=True)
    run = subprocess.Popen(
        [sys.executable, "-m", "rlhf_img", "train", recipe],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    logged = []
    for line in run.stdout:  # TRL prints one dict per logged step
        if "'rewards/vlm_judge/mean'" in line:
            logged.append(line)
            os.killpg(judge_server.process.pid, signal.SIGKILL)  # the judge dies between two steps
            break
    start = time.monotonic()
    rest, stderr = run.communicate(timeout=180)
    logged += [line for line in rest.splitlines() if "'rewards/vlm_judge/mean'" in line]
    assert run.returncode == 1, stderr[-3000:]
    assert time.monotonic() - start < 120  # retries are bounded: timeout x (retries + 1) + backoff
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("rlhf-img: ")]
    assert len(lines) == 1, stderr[-3000:]
    assert "reward 'vlm_judge' raised" in lines[0] and judge_server.base_url in lines[0]
    assert len(logged) <= 2  # the step in flight when the server died may log; none after it, no zeros
    assert all("'rewards/vlm_judge/mean': '0'" not in line for line in logged)
