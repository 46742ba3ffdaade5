"""The OCR reward's and CVTG-2K's text arithmetic, on hand-worked examples (no OCR engine)."""

import random
from fractions import Fraction

import pytest

pytest.importorskip("rapidfuzz", reason="the `ocr` extra (rapidfuzz) is not installed")

from rlhf_img.rewards.ocr import join_in_reading_order, reading_order  # noqa: E402
from rlhf_img.rewards.text_match import (  # noqa: E402
    CVTG_NED_EPSILON,
    WordScores,
    capped_distance,
    cvtg_quoted_words,
    cvtg_summary,
    cvtg_word_scores,
    exact_match,
    normalize_text,
    ocr_reward,
    quoted_target,
    word_similarity,
    words,
)


def reference_levenshtein(first: str, second: str) -> int:
    """Textbook dynamic programme, independent of rapidfuzz."""
    previous = list(range(len(second) + 1))
    for i, a in enumerate(first, 1):
        current = [i]
        for j, b in enumerate(second, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return previous[-1]


def test_target_is_the_text_between_the_first_pair_of_double_quotes():
    assert quoted_target('a sign that reads "Open Late" next to "Closed"') == "Open Late"
    assert quoted_target('"Gate 7" painted on a wall') == "Gate 7"
    assert quoted_target('a sign that reads "Open Late') is None  # one quote: no pair
    assert quoted_target("a sign that reads 'Open Late'") is None  # single quotes are not the rule
    assert quoted_target('an empty "" sign') == ""


def test_normalisation_drops_spaces_and_case_only():
    assert normalize_text("  Open   LATE ") == "openlate"
    assert normalize_text("Sale-50%!") == "sale-50%!"  # punctuation is kept


def test_substring_of_the_recognised_text_is_distance_zero():
    assert capped_distance("WELCOME! we are open late tonight", "Open Late") == 0
    assert ocr_reward("WELCOME! we are open late tonight", "Open Late") == 1.0


def test_distance_is_capped_at_the_target_length():
    # Levenshtein("xxxxxxxxxxxxxxxxxxxx", "abc") = 20, capped at 3: the reward bottoms out at 0, never negative
    assert capped_distance("x" * 20, "abc") == 3
    assert ocr_reward("x" * 20, "abc") == 0.0


def test_case_and_spaces_do_not_change_the_reward():
    assert ocr_reward("OPEN   late", "Open Late") == 1.0
    assert ocr_reward("OpenLate", "open late") == 1.0


def test_hand_worked_rewards():
    assert ocr_reward("Opn Late", "Open Late") == 0.875  # "opnlate" vs "openlate": 1 insertion, 8 letters
    assert ocr_reward("Fresh Brad", "Fresh Bread") == 0.9  # 1 of 10 letters
    assert ocr_reward("Big Dream Gate 7", "Dream Big Gate 7") == 1 - 6 / 13  # "bigdreamgate7" vs "dreambiggate7"
    assert ocr_reward("", "Open Late") == 0.0  # nothing recognised


def test_reward_is_the_exact_fraction_rounded_once():
    """Against an independent DP and exact rationals: `1 - d / n` in floats would miss by an ulp on e.g. n = 3."""
    rng = random.Random(0)
    pairs = [("ab", "abc"), ("a", "abc"), ("kitten", "sitting"), ("lawn", "flaw"), ("", "xyz")]
    alphabet = "abc d"
    pairs += [
        (
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9))),
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))),
        )
        for _ in range(300)
    ]
    checked = 0
    for recognised, target in pairs:
        rec, tgt = recognised.replace(" ", "").lower(), target.replace(" ", "").lower()
        if not tgt:
            continue
        distance = 0 if tgt in rec else min(reference_levenshtein(rec, tgt), len(tgt))
        assert ocr_reward(recognised, target) == float(Fraction(len(tgt) - distance, len(tgt))), (recognised, target)
        checked += 1
    assert checked > 250
    assert ocr_reward("a", "abc") == float(Fraction(1, 3)) and ocr_reward("ab", "abc") == float(Fraction(2, 3))
    assert 1 - 1 / 3 != float(Fraction(2, 3))  # the naive formula would have failed the line above


def test_empty_target_is_an_error_naming_it():
    with pytest.raises(ValueError, match="target '  ' is empty"):
        ocr_reward("anything", "  ")


def test_exact_match_is_normalised_equality_without_extra_text():
    assert exact_match("OPEN late", "Open Late")
    assert not exact_match("we are open late", "Open Late")  # the reward's substring rule would give 1.0


def test_cvtg_target_words_are_every_single_quoted_span_lower_cased():
    prompt = "A shop sign reading 'Open Late' above a poster saying 'FRESH bread, daily'"
    assert cvtg_quoted_words(prompt) == ["open", "late", "fresh", "bread,", "daily"]
    assert words("  Two\tWords ") == ["two", "words"]


def test_cvtg_word_accuracy_counts_verbatim_words_and_ned_uses_max_length_plus_epsilon():
    scores = cvtg_word_scores(["open", "late"], ["open", "lat"])
    assert (scores.total, scores.correct) == (2, 1)
    assert scores.similarities[0] == 1.0
    assert scores.similarities[1] == 1 - 1 / (4 + CVTG_NED_EPSILON)  # "late" vs "lat": 1 deletion, max length 4
    assert scores.accuracy == 0.5
    assert scores.ned == pytest.approx((1 + 0.75) / 2, abs=1e-5)


def test_cvtg_punctuation_and_repeated_target_words():
    assert cvtg_word_scores(["sale!"], ["sale"]).correct == 0  # verbatim: punctuation matters
    assert cvtg_word_scores(["go", "go"], ["go"]).correct == 2  # membership per target word, duplicates count


def test_cvtg_nothing_recognised_is_one_empty_word():
    scores = cvtg_word_scores(["blank"], [])
    assert scores.correct == 0
    assert scores.similarities == [1 - 5 / (5 + CVTG_NED_EPSILON)]  # about 2e-6, as CVTG-2K's script gives


def test_cvtg_closest_word_is_difflibs_choice_not_the_smallest_edit_distance():
    # "oven" and "peon" both share 3 characters with "open" (SequenceMatcher ratio 0.75); difflib breaks the tie
    # towards the larger string, "peon" (2 edits), although "oven" is 1 edit away
    scores = cvtg_word_scores(["open"], ["oven", "peon"])
    assert scores.similarities == [word_similarity("open", "peon")]
    assert word_similarity("open", "peon") == 1 - 2 / (4 + CVTG_NED_EPSILON)


def test_cvtg_summary_pools_words_across_images():
    first = cvtg_word_scores(["dream", "big"], ["dream", "big"])
    second = cvtg_word_scores(["gate"], ["gale"])
    accuracy, ned = cvtg_summary([first, second])
    assert accuracy == 2 / 3  # not the mean of per-image accuracies (1 and 0 -> 0.5)
    assert ned == pytest.approx((1 + 1 + 0.75) / 3, abs=1e-5)
    assert cvtg_summary([]) == (0.0, 0.0)
    assert cvtg_summary([WordScores()]) == (0.0, 0.0)


def box(left: float, top: float, right: float, bottom: float) -> list[list[float]]:
    return [[left, top], [right, top], [right, bottom], [left, bottom]]


def test_reading_order_keeps_a_raised_word_on_its_line():
    """rapidocr's own sort puts "Big" first when it starts 20 px above "Dream" (it swaps only within 10 px)."""
    boxes = [box(300, 200, 400, 250), box(100, 220, 280, 270), box(150, 300, 350, 350)]  # Big, Dream, Gate 7
    texts = ["Big", "Dream", "Gate 7"]
    assert reading_order(boxes) == [1, 0, 2]
    assert join_in_reading_order(boxes, texts) == "Dream Big Gate 7"
    assert ocr_reward(join_in_reading_order(boxes, texts), "Dream Big Gate 7") == 1.0


def test_reading_order_of_separate_lines_is_top_to_bottom():
    boxes = [box(10, 300, 90, 330), box(10, 100, 90, 130), box(200, 105, 300, 128), box(10, 200, 90, 230)]
    assert reading_order(boxes) == [1, 2, 3, 0]
    assert reading_order([]) == []
