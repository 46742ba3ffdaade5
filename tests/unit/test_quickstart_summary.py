"""The quickstart says which step's weights it saved (and so scored): keep_best's pick, else the last step."""

import json

from rlhf_img.quickstart import _kept_step


def _write_best(folder, best_step, last_step):
    record = {
        "metric": "eval_geneval/overall",
        "mode": "max",
        "best_step": best_step,
        "best_value": 0.55,
        "last_step": last_step,
        "last_value": 0.5,
        "evals": [{"step": s, "value": 0.5} for s in (0, 25, 50)],
    }
    (folder / "best_step.json").write_text(json.dumps(record))


def test_keep_best_names_the_kept_step_and_the_last_one(tmp_path):
    _write_best(tmp_path, 25, 50)
    kept = _kept_step(str(tmp_path), 50, keep_best=True)
    assert kept["step"] == 25
    assert kept["why"] == "keep_best: eval_geneval/overall 0.55, best of 3 in-loop evals; last step 50: 0.5"


def test_a_kept_step_below_the_peak_says_it_was_within_the_tolerance(tmp_path):
    _write_best(tmp_path, 100, 100)
    record = json.loads((tmp_path / "best_step.json").read_text())
    record.update(best_value=0.453, last_value=0.453, tolerance=0.045, peak_step=50, peak_value=0.458)
    (tmp_path / "best_step.json").write_text(json.dumps(record))
    assert _kept_step(str(tmp_path), 100, keep_best=True) == {
        "step": 100,
        "why": "keep_best: eval_geneval/overall 0.453, the latest of 3 in-loop evals within 0.045 of the best, "
        "0.458 at step 50; last step 100: 0.453",
    }


def test_without_keep_best_the_last_step_even_if_an_old_run_left_a_best_step_file(tmp_path):
    _write_best(tmp_path, 25, 50)
    assert _kept_step(str(tmp_path), 100, keep_best=False) == {"step": 100, "why": "the last step"}
    assert _kept_step(str(tmp_path / "missing"), 7, keep_best=True) == {"step": 7, "why": "the last step"}
