"""keep_best's choice of step, on readings given directly (no training): strict improvement by default, and
`best_metric_tolerance` letting a later step within the eval's noise of the peak take over."""

import json
import types

import pytest
import torch

from rlhf_img.best_weights import BestWeights
from rlhf_img.config import ImageGRPOConfig

CPU = types.SimpleNamespace(device=torch.device("cpu"))


def run_readings(tmp_path, readings, mode="max", tolerance=0.0):
    """Feed `readings` (one per eval step 0, 25, ...) with the weights set to the step number; return the
    BestWeights, the model as restored, and best_step.json."""
    model = torch.nn.Linear(2, 1)
    best = BestWeights("eval_geneval/overall", mode, str(tmp_path), tolerance)
    for index, value in enumerate(readings):
        with torch.no_grad():
            model.weight.fill_(25 * index)
        best.update(model, 25 * index, {"eval_geneval/overall": value}, CPU)
    state = types.SimpleNamespace(best_metric=None, best_global_step=None)
    best.finish(model, state, is_main_process=True)
    record = json.loads((tmp_path / "best_step.json").read_text())
    return best, model, state, record


def test_without_tolerance_the_strictly_best_reading_wins_and_ties_keep_the_earlier_step(tmp_path):
    # the readings of a real run (shipped recipe, seed 2): 0.458 at step 50 beats 0.453 at step 100
    _, model, state, record = run_readings(tmp_path, [0.344, 0.385, 0.458, 0.427, 0.458])
    assert record["best_step"] == 50 and record["peak_step"] == 50 and record["tolerance"] == 0.0
    assert torch.all(model.weight == 50) and (state.best_global_step, state.best_metric) == (50, 0.458)


def test_a_later_step_within_the_tolerance_of_the_peak_takes_over(tmp_path, capsys):
    _, model, state, record = run_readings(tmp_path, [0.344, 0.385, 0.458, 0.427, 0.453], tolerance=0.045)
    assert (record["best_step"], record["best_value"]) == (100, 0.453)
    assert (record["peak_step"], record["peak_value"]) == (50, 0.458)
    assert torch.all(model.weight == 100) and state.best_global_step == 100
    out = capsys.readouterr().out
    assert "the weights of step 100 (eval_geneval/overall 0.453, the latest of 5 in-loop evals within 0.045" in out
    assert "0.458 at step 50" in out


def test_a_fall_larger_than_the_tolerance_keeps_the_peak(tmp_path):
    # 0.40 at step 100 is more than 0.045 under the peak 0.55 (step 50): step 75 (0.52, within) is kept
    _, model, _, record = run_readings(tmp_path, [0.34, 0.47, 0.55, 0.52, 0.40], tolerance=0.045)
    assert (record["best_step"], record["peak_step"], record["last_step"]) == (75, 50, 100)
    assert torch.all(model.weight == 75)


def test_the_tolerance_works_downwards_in_min_mode(tmp_path):
    _, model, _, record = run_readings(tmp_path, [0.9, 0.5, 0.52, 0.7], mode="min", tolerance=0.05)
    assert (record["best_step"], record["peak_step"]) == (50, 25)
    assert torch.all(model.weight == 50)


@pytest.mark.parametrize("bad", [-0.1, float("inf"), True, "0.1"])
def test_a_bad_tolerance_is_refused_with_the_key_named(tmp_path, bad):
    with pytest.raises(ValueError, match="best_metric_tolerance must be a number >= 0"):
        ImageGRPOConfig(output_dir=str(tmp_path), best_metric_tolerance=bad, use_cpu=True, report_to="none")
