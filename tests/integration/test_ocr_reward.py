"""The `ocr` reward and the `ocr` eval judge on the real PP-OCRv4 weights bundled in rapidocr-onnxruntime, reading
text rendered with PIL in the test (about 0.1-0.2 s per 512 px image on one CPU thread)."""

import ast
import importlib.util
import json
import os
import sys

import pytest
import torch
from conftest import REPO
from text_images import blank, render_sign

import rlhf_img.rewards.ocr as ocr_module
import rlhf_img.rewards.text_match as text_match_module
from rlhf_img.rewards import RewardConfigError, RewardError, build_rewards, list_rewards, score_rewards
from rlhf_img.rewards.ocr import INSTALL_HINT, OcrReward
from rlhf_img.rewards.text_match import cvtg_word_scores, ocr_reward, words

needs_rapidocr = pytest.mark.skipif(
    importlib.util.find_spec("rapidocr_onnxruntime") is None,
    reason="rapidocr-onnxruntime is not installed (pip install 'rlhf-img[ocr]')",
)


@pytest.fixture(scope="module")
def ocr_reward_fn():
    """One `ocr` reward (one engine) for the module, built as a recipe builds it."""
    (reward,) = build_rewards([{"name": "ocr", "kwargs": {"threads": 1, "min_confidence": 0.5}}])
    return reward


@pytest.fixture(scope="module")
def misspelled_read(ocr_reward_fn):
    image = render_sign("Fresh Brad")[None]
    return image, ocr_reward_fn.fn.read_texts(image)[0]


def test_ocr_is_registered_and_its_modules_import_no_optional_package_at_import_time():
    """`import rlhf_img.rewards` registers `ocr` without the `ocr` extra: the engine and rapidfuzz are imported
    inside functions only (read from the source: other tests in this process may have imported them already)."""
    assert "ocr" in list_rewards()
    optional = {"rapidocr_onnxruntime", "rapidfuzz", "onnxruntime", "cv2"}
    for module in (ocr_module, text_match_module):
        tree = ast.parse(open(module.__file__, encoding="utf-8").read())
        top_level = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                top_level |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                top_level.add(node.module.split(".")[0])
        assert not top_level & optional, (module.__name__, top_level & optional)


def test_missing_rapidocr_is_a_one_line_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # `import` now raises ImportError
    with pytest.raises(RewardConfigError) as error:
        OcrReward()
    assert str(error.value) == INSTALL_HINT == "reward 'ocr' needs rapidocr-onnxruntime: pip install 'rlhf-img[ocr]'"


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"threads": 0}, "threads"),
        ({"det_limit_side_len": 8}, "det_limit_side_len"),
        ({"min_confidence": 1.5}, "min_confidence"),
        ({"text_column": ""}, "text_column"),
    ],
)
def test_bad_kwargs_name_the_key(kwargs, key):
    with pytest.raises(RewardConfigError, match=f"reward 'ocr': '{key}' must be"):
        build_rewards([{"name": "ocr", "kwargs": kwargs}])


@needs_rapidocr
def test_a_batch_of_correctly_rendered_texts_scores_near_one(ocr_reward_fn):
    texts = ["Open Late", "Gate 12", "Fresh Bread Daily", "Dream Big\nGate 7"]
    images = torch.stack(
        [
            render_sign(texts[0]),
            render_sign(texts[1], background=(180, 40, 40)),
            render_sign(texts[2], font_size=44),
            render_sign(texts[3], background=(30, 120, 60)),
        ]
    )
    prompts = [f'a sign that reads "{text}"'.replace("\n", " ") for text in texts]
    scores = score_rewards([ocr_reward_fn], prompts, images, {})[:, 0]
    assert scores.shape == (4,)
    assert (scores >= 0.95).all(), scores


@needs_rapidocr
def test_a_misspelled_render_scores_lower_and_exactly_by_the_formula(ocr_reward_fn, misspelled_read):
    image, recognised = misspelled_read
    (score,) = ocr_reward_fn(['a bakery sign that reads "Fresh Bread"'], image)
    assert score == ocr_reward(recognised, "Fresh Bread")
    assert score <= 0.9  # one letter of ten missing at best
    assert score > 0.5  # but the rest was read


@needs_rapidocr
def test_a_blank_image_scores_zero(ocr_reward_fn):
    images = torch.stack([blank(value=1.0), blank(value=0.3)])
    assert ocr_reward_fn(['a sign that reads "Open Late"'] * 2, images) == [0.0, 0.0]
    assert ocr_reward_fn.fn.read_texts(images) == ["", ""]


@needs_rapidocr
def test_a_prompt_without_quotes_reads_the_text_column(ocr_reward_fn):
    images = torch.stack([render_sign("Gate 12"), render_sign("Gate 12")])
    scores = score_rewards([ocr_reward_fn], ["a gate sign", 'a sign "Gate 12"'], images, {"text": ["Gate 12", None]})[
        :, 0
    ]
    assert (scores >= 0.95).all(), scores


@needs_rapidocr
def test_a_prompt_without_quotes_or_column_value_is_a_one_line_error_naming_it():
    (reward,) = build_rewards(["ocr"])
    with pytest.raises(RewardError) as error:  # raised before any OCR runs
        score_rewards([reward], ['a sign "Gate 12"', "a red\nsign"], torch.zeros(2, 3, 8, 8), {"text": ["x", ""]})
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        "reward 'ocr' raised ValueError: prompt 'a red\\nsign' has no double-quoted text and no "
        "'text' column value to compare the image's text with"
    )


@needs_rapidocr
def test_detection_limit_kwarg_is_rapidocrs_own():
    reward = OcrReward(det_limit_side_len=736)
    assert reward.read_texts(render_sign("Open Late")[None]) == ["Open Late"]
    assert reward.engine().text_det.limit_side_len == 736 and reward.engine().text_det.limit_type == "min"
    native = OcrReward().engine().text_det
    assert native.limit_type == "max"  # never shrinks below rapidocr's own 2000 px cap: the image's own size


@needs_rapidocr
def test_text_rendering_judge_records_and_table(misspelled_read):
    from rlhf_img.eval.text_rendering import TextRenderingJudge

    judge = TextRenderingJudge(threads=1)
    misspelled, recognised = misspelled_read
    images = torch.cat([render_sign("Open Late")[None], misspelled, blank()[None]])
    rows = [
        {"prompt": 'a diner sign that reads "Open Late"'},
        {"prompt": "a bakery sign", "text": "Fresh Bread"},
        {"prompt": 'a poster that says "Sold Out"'},
    ]
    records = judge.judge(images, rows)
    json.dumps(records)  # JSON-able
    assert [record["target"] for record in records] == ["Open Late", "Fresh Bread", "Sold Out"]
    assert [record["ocr_text"] for record in records] == ["Open Late", recognised, ""]
    assert set(records[0]) >= {"prompt", "target", "ocr_text", "reward", "word_accuracy", "ned", "latency_s"}
    assert (records[0]["reward"], records[0]["word_accuracy"], records[0]["ned"]) == (1.0, 1.0, 1.0)
    assert records[0]["exact_match"] and not records[1]["exact_match"] and not records[2]["exact_match"]
    assert records[1]["reward"] == ocr_reward(recognised, "Fresh Bread")
    expected = cvtg_word_scores(["fresh", "bread"], words(recognised))
    assert (records[1]["words_correct"], records[1]["word_similarities"]) == (expected.correct, expected.similarities)
    assert records[2]["reward"] == 0.0 and records[2]["word_accuracy"] == 0.0 and records[2]["ned"] < 1e-5
    assert all(0 < record["latency_s"] < 30 for record in records)

    table = judge.table(records)
    assert table["images"] == 3
    assert table["word_accuracy"] == (2 + expected.correct) / 6  # pooled over 2 + 2 + 2 target words
    similarities = [1.0, 1.0] + expected.similarities + records[2]["word_similarities"]
    assert table["ned"] == pytest.approx(sum(similarities) / 6, abs=1e-12)
    assert table["reward"] == pytest.approx((1.0 + records[1]["reward"] + 0.0) / 3, abs=1e-12)
    assert table["exact_match"] == 1 / 3
    assert table["latency_s"] == pytest.approx(sum(record["latency_s"] for record in records) / 3, abs=1e-12)
    assert judge.table([]) == {"images": 0}


@needs_rapidocr
def test_ocr_benchmark_prints_the_table_and_writes_json(tmp_path, monkeypatch, capsys):
    """bench/ocr_reward.py run in this process (a subprocess would spend seconds importing torch again)."""
    spec = importlib.util.spec_from_file_location("bench_ocr_reward", os.path.join(REPO, "bench", "ocr_reward.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "ocr.json"
    monkeypatch.setattr(
        sys, "argv", ["ocr_reward.py", "--images", "3", "--repeats", "1", "--compare", "none", "--json", str(out)]
    )
    bench.main()
    (figures,) = json.loads(out.read_text()).values()
    assert figures["images"] == 3 and figures["kwargs"] == {"threads": 1}
    assert 0 < figures["latency_min_s"] <= figures["latency_median_s"] <= figures["latency_max_s"]
    assert all(0 <= figures[key] <= 1 for key in ("exact_match", "reward", "word_accuracy", "ned"))
    printed = capsys.readouterr().out
    assert "native size" in printed and "word acc" in printed
