"""GenEval 2-style VQA: atoms and questions, Soft-TIFA arithmetic, the exact answerer's facts, and the VLM answerer
with a fake client (probabilities from log-probs, the text fallback, failures that raise one line or mask)."""

import json
import math
import os
from dataclasses import dataclass

import pytest
import torch
from conftest import REPO

from rlhf_img.eval.vqa import (
    Atom,
    ShapesAnswerer,
    VlmAnswerer,
    VqaAnswerError,
    VqaJudge,
    aggregate,
    answer_probability,
    atoms_for_row,
    atoms_from_geneval,
    atoms_from_geneval2,
)
from rlhf_img.eval.vqa.atoms import plural, prompt_file_row
from rlhf_img.eval.vqa.files import main as files_main
from rlhf_img.eval.vqa.files import read_prompt_file
from rlhf_img.eval.vqa.scoring import soft_tifa_am, soft_tifa_gm, strict, tifa
from rlhf_img.geneval_rules import TAGS, Detection
from rlhf_img.worlds import shapes


def _questions(atoms):
    return [(atom.type, atom.question, atom.answer) for atom in atoms]


def _first_row(tag):
    return next(row for row in shapes.all_prompts() if row["tag"] == tag)


# ------------------------------------------------------------------------------------------- atoms and questions
EXPECTED_GENEVAL2 = {
    "single_object": [
        ("object", "Are there any circles in the image?", "yes"),
        ("count", "How many circles are in the image?", "one"),
    ],
    "two_object": [
        ("object", "Are there any circles in the image?", "yes"),
        ("count", "How many circles are in the image?", "one"),
        ("object", "Are there any squares in the image?", "yes"),
        ("count", "How many squares are in the image?", "one"),
    ],
    "counting": [
        ("object", "Are there any circles in the image?", "yes"),
        ("count", "How many circles are in the image?", "two"),
    ],
    "colors": [
        ("object", "Are there any circles in the image?", "yes"),
        ("count", "How many circles are in the image?", "one"),
        ("color", "Is the circle red?", "yes"),
    ],
    "position": [
        ("object", "Are there any squares in the image?", "yes"),
        ("count", "How many squares are in the image?", "one"),
        ("object", "Are there any circles in the image?", "yes"),
        ("count", "How many circles are in the image?", "one"),
        ("position", "Is the circle to the left of the square?", "yes"),
    ],
    "color_attr": [
        ("object", "Are there any circles in the image?", "yes"),
        ("count", "How many circles are in the image?", "one"),
        ("color", "Is the circle red?", "yes"),
        ("object", "Are there any squares in the image?", "yes"),
        ("count", "How many squares are in the image?", "one"),
        ("color", "Is the square green?", "yes"),
    ],
}


@pytest.mark.parametrize("tag", TAGS)
def test_every_shapes_tag_gets_geneval2_questions(tag):
    row = _first_row(tag)
    assert _questions(atoms_from_geneval(row)) == EXPECTED_GENEVAL2[tag], row["prompt"]
    # GenEval's rules: no count question where the metadata only asks for "at least one"
    geneval = atoms_from_geneval(row, counts="geneval")
    kept = [q for q in EXPECTED_GENEVAL2[tag] if q[0] != "count" or tag == "counting"]
    assert _questions(geneval) == kept


def test_every_shapes_prompt_yields_atoms_the_exact_answerer_can_read():
    for row in shapes.all_prompts():
        for atom in atoms_from_geneval(row):
            assert atom.subject in shapes.SHAPES
            assert (atom.type == "color") == (atom.color is not None)
            assert (atom.type == "position") == (atom.relation is not None and atom.target is not None)


def test_geneval_metadata_with_coco_classes_counts_and_uncapped_excludes():
    row = {
        "tag": "counting",
        "prompt": "a photo of three wine glasses and a person",
        "include": [
            {"class": "wine glass", "count": 3},
            {"class": "person", "count": 1, "color": "red", "position": ["below", 0]},
        ],
        "exclude": [{"class": "dog", "count": 1}, {"class": "wine glass", "count": 4}],
    }
    assert _questions(atoms_from_geneval(row, "geneval")) == [
        ("object", "Are there any wine glasses in the image?", "yes"),
        ("count", "How many wine glasses are in the image?", "three"),  # include 3 + exclude 4 = exactly 3
        ("object", "Are there any people in the image?", "yes"),
        ("color", "Is the person red?", "yes"),
        ("position", "Is the person below the wine glasses?", "yes"),
        ("count", "Are there any dogs in the image?", "no"),
    ]
    uncapped = dict(row, exclude=[])
    assert ("count", "Are there at least three wine glasses in the image?", "yes") in _questions(
        atoms_from_geneval(uncapped, "geneval")
    )
    assert [plural(name) for name in ("bus", "skis", "sheep", "cherry", "toy", "bench", "hair drier")] == [
        "buses",
        "skis",
        "sheep",
        "cherries",
        "toys",
        "benches",
        "hair driers",
    ]


def test_position_clause_pointing_at_itself_is_refused():
    row = {"prompt": "p", "include": [{"class": "circle", "count": 1, "position": ["above", 0]}]}
    with pytest.raises(ValueError, match="positioned relative to clause 0"):
        atoms_from_geneval(row)


def test_geneval2_rows_are_read_with_their_questions_and_skills():
    # a row written here in GenEval 2's published format (not taken from their data file)
    row = {
        "prompt": "two blue kites above a wooden bench",
        "atom_count": 5,
        "vqa_list": [
            ["How many kites are in the image?", "two"],
            ["Are the kites blue?", "Yes"],
            ["Are there any kites in the image?", "Yes"],
            ["Are the kites above the bench?", "Yes"],
            ["How many benches are in the image?", "one"],
            ["Is the bench wooden?", "Yes"],
            ["Are there any benches in the image?", "Yes"],
        ],
        "skills": ["count", "attribute", "object", "position", "count", "attribute", "object"],
    }
    atoms = atoms_from_geneval2(row)
    assert [(a.type, a.answer, a.count) for a in atoms[:2]] == [("count", "two", 2), ("attribute", "yes", None)]
    assert atoms_for_row(row) == atoms
    converted = prompt_file_row(row)
    assert "vqa_list" not in converted and converted["atom_count"] == 5
    assert atoms_for_row(converted) == atoms
    with pytest.raises(ValueError, match="7 questions and 6 skills"):
        atoms_from_geneval2(dict(row, skills=row["skills"][:-1]))


def test_prompt_file_atoms_round_trip_and_bad_entries_name_the_prompt(tmp_path):
    atom = Atom(
        "position",
        "Is the circle above the squares?",
        subject="circle",
        relation="above",
        target="square",
        target_count=2,
    )
    assert Atom.from_json(atom.to_json()) == atom
    # Arrow-typed rows carry absent keys as None
    assert Atom.from_json({**atom.to_json(), "color": None, "answer": None}) == atom
    with pytest.raises(ValueError, match=r"prompt 'p', atom 0: unknown atom key\(s\) \['colour'\]"):
        atoms_for_row({"prompt": "p", "atoms": [{"type": "color", "question": "q", "colour": "red"}]})
    with pytest.raises(ValueError, match="has no atoms"):
        atoms_for_row({"prompt": "p"})
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "atoms": [atom.to_json()]}) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: vqa: prompt 'x' has no atoms"):
        read_prompt_file(str(path))


def test_shipped_vqa_prompt_file_matches_the_generator(tmp_path):
    _, held_out = shapes.split_prompts()
    with open(os.path.join(REPO, "recipes", "prompts", "vqa-shapes-held-out.jsonl")) as f:
        shipped = [json.loads(line) for line in f]
    assert shipped == [prompt_file_row(row) for row in held_out]
    assert files_main(["shapes-held-out", str(tmp_path / "out.jsonl")]) == 0
    assert read_prompt_file(str(tmp_path / "out.jsonl")) == shipped


# ----------------------------------------------------------------------------------------------------- Soft-TIFA
def test_soft_tifa_tifa_and_strict_against_hand_worked_values():
    probabilities = [0.9, 0.5, 0.8]
    assert soft_tifa_am(probabilities) == pytest.approx(2.2 / 3)
    assert soft_tifa_gm(probabilities) == pytest.approx(0.36 ** (1 / 3))  # 0.9 * 0.5 * 0.8 = 0.36
    assert tifa(probabilities) == pytest.approx(2 / 3)  # 0.5 is not a "yes"
    assert strict(probabilities) == 0.0 and strict([0.9, 0.51]) == 1.0
    assert soft_tifa_gm([1.0, 0.0, 1.0]) == 0.0 and soft_tifa_am([1.0, 0.0, 1.0]) == pytest.approx(2 / 3)
    assert aggregate([0.25, 1.0], "soft_tifa") == pytest.approx(0.5)  # soft_tifa = GenEval 2's GM
    assert aggregate([0.9, math.nan], "soft_tifa_am") is None
    with pytest.raises(ValueError, match="aggregation must be one of"):
        aggregate([1.0], "mean")


class FixedAnswerer:
    """Answers every image's questions with preset probabilities."""

    def __init__(self, probabilities):
        self.probabilities = probabilities

    def yes_probabilities(self, images, questions):
        return [list(p) for p in self.probabilities]


def test_judge_records_and_table_per_tag_atom_type_and_atomicity():
    rows = [
        _first_row("colors"),
        _first_row("single_object"),
        {
            "prompt": "g2",
            "atom_count": 2,
            "atoms": [{"type": "object", "question": "Any?"}, {"type": "attribute", "question": "Red?"}],
        },
    ]
    judge = VqaJudge(FixedAnswerer([[1.0, 0.5, 0.8], [1.0, 1.0], [0.64, 1.0]]))
    records = judge.judge(torch.zeros(3, 3, 8, 8), rows)
    assert json.loads(json.dumps(records)) == records
    assert [r["correct"] for r in records] == [False, True, True]
    assert records[0]["score"] == pytest.approx(0.4 ** (1 / 3))
    assert records[0]["atoms"][2] == {"type": "color", "question": "Is the circle red?", "answer": "yes", "p": 0.8}
    table = judge.table(records)
    assert table["overall"] == pytest.approx((0.4 ** (1 / 3) + 1.0 + 0.8) / 3)
    assert table["soft_tifa_am"] == pytest.approx((2.3 / 3 + 1.0 + 0.82) / 3)
    assert table["strict"] == pytest.approx(2 / 3)
    assert table["tag/colors"] == pytest.approx(0.4 ** (1 / 3)) and table["tag/single_object"] == 1.0
    assert table["atom/object"] == pytest.approx((1.0 + 1.0 + 0.64) / 3) and table["atom/count"] == 0.75
    assert table["atom/color"] == 0.8 and table["atom/attribute"] == 1.0
    assert table["atomicity/2"] == pytest.approx(0.8) and table["masked"] == 0.0 and table["images"] == 3.0


# ------------------------------------------------------------------------------------------ the exact answerer
def _box(x, y, color="red"):
    return Detection((x, y, x + 4.0, y + 4.0), 1.0, color)


def test_shapes_answerer_facts_on_hand_made_detections():
    detections = {
        "circle": [_box(0, 10, "blue"), _box(20, 10, "red"), _box(0, 20, "red")],
        "square": [_box(10, 10), _box(10, 20)],
    }
    holds = ShapesAnswerer.holds
    assert holds(Atom("object", "q", subject="circle"), detections)
    assert not holds(Atom("object", "q", subject="triangle"), detections)
    assert holds(Atom("count", "q", "three", subject="circle", count=3), detections)
    assert not holds(Atom("count", "q", "two", subject="circle", count=2), detections)
    assert holds(Atom("count", "q", subject="circle", count=2, quantifier="at least"), detections)
    assert holds(Atom("count", "q", "no", subject="triangle", count=1, quantifier="fewer than"), detections)
    assert holds(Atom("color", "q", subject="circle", color="red", count=2), detections)
    assert not holds(Atom("color", "q", subject="circle", color="blue", count=2), detections)
    assert holds(Atom("color", "q", "no", subject="square", color="blue"), detections)
    # the two left circles are each left of both squares; no two circles are right of the same square
    assert holds(
        Atom("position", "q", subject="circle", relation="left of", target="square", count=2, target_count=2),
        detections,
    )
    assert not holds(Atom("position", "q", subject="circle", relation="right of", target="square", count=2), detections)
    with pytest.raises(ValueError, match="needs structured atoms; 'Is it nice\\?' has no 'subject'"):
        ShapesAnswerer().yes_probabilities(torch.zeros(1, 3, 32, 32), [["Is it nice?"]])
    with pytest.raises(ValueError, match="cannot answer 'verb' atoms"):
        holds(Atom("verb", "Is the circle chasing the square?", subject="circle"), detections)


# ------------------------------------------------------------------------------------------------- the VLM answerer
@dataclass(frozen=True)
class FakeChatAnswer:  # the shape of rlhf_img.rewards.vlm_client.ChatAnswer
    text: str
    top_logprobs: list[dict[str, float]] | None = None


class FakeVlmCallError(RuntimeError):
    pass


class FakeClient:
    """`VlmClient.ask`'s signature; replies by question text."""

    def __init__(self, replies):
        self.replies, self.calls = replies, []

    def ask(self, items, *, max_tokens=64, top_logprobs=0, system=None):
        self.calls.append(
            {"items": list(items), "max_tokens": max_tokens, "top_logprobs": top_logprobs, "system": system}
        )
        return [self.replies[question] for _, question in items]


def _logprobs(**probabilities):
    return [{token.replace("_", " "): math.log(p) for token, p in probabilities.items()}]


def test_answer_probability_from_logprobs_and_from_the_text():
    yes = FakeChatAnswer("Yes", _logprobs(Yes=0.7, _yes=0.1, No=0.15))
    assert answer_probability(yes) == pytest.approx(0.8)  # GenEval 2: summed over spellings
    assert answer_probability(yes, "no") == pytest.approx(0.15)
    three = FakeChatAnswer("three", [{"three": math.log(0.6), "3": math.log(0.2), "four": math.log(0.15)}])
    assert answer_probability(three, "three") == pytest.approx(0.8)
    assert answer_probability(FakeChatAnswer("No, there is a square."), "yes") == 0.0
    assert answer_probability(FakeChatAnswer("yes.")) == 1.0
    assert answer_probability(FakeChatAnswer("2"), "two") == 1.0
    assert answer_probability(FakeChatAnswer("12 circles"), "two") == 0.0  # a wrong count, not a non-answer
    # log-probs of a markdown token: the first token is not the answer, the text decides
    assert answer_probability(FakeChatAnswer("**Yes**", _logprobs(**{"**": 0.9, "Yes": 0.05}))) == 1.0
    assert answer_probability(FakeChatAnswer("I cannot tell")) is None
    assert answer_probability(FakeChatAnswer("three"), "yes") is None
    assert answer_probability(FakeChatAnswer("maybe"), "two") is None
    assert answer_probability(FakeChatAnswer(""), "yes") is None


def test_vlm_answerer_asks_each_question_with_geneval2_suffix_and_reads_probabilities():
    client = FakeClient(
        {
            "Are there any circles in the image? Answer in one word.": FakeChatAnswer(
                "Yes", _logprobs(Yes=0.9, No=0.1)
            ),
            "How many circles are in the image? Answer in one word.": FakeChatAnswer("One"),
        }
    )
    answerer = VlmAnswerer(client, min_image_side=64)
    row = _first_row("single_object")
    judge = VqaJudge(answerer, aggregation="soft_tifa_am")
    records = judge.judge(torch.rand(2, 3, 32, 32), [row, row])
    assert [r["score"] for r in records] == [pytest.approx(0.95)] * 2
    (call,) = client.calls
    assert len(call["items"]) == 4 and call["top_logprobs"] == 20 and call["max_tokens"] == 8
    assert call["items"][0][0].size == (64, 64)  # upscaled, nearest


def test_vlm_failure_raises_one_line_naming_question_prompt_and_reply():
    client = FakeClient(
        {
            "Is the circle red? Answer in one word.": FakeChatAnswer("It is crimson, I think."),
            "Are there any circles in the image? Answer in one word.": FakeChatAnswer("Yes"),
            "How many circles are in the image? Answer in one word.": FakeChatAnswer("one"),
        }
    )
    row = _first_row("colors")
    with pytest.raises(VqaAnswerError) as raised:
        VqaJudge(VlmAnswerer(client)).judge(torch.rand(1, 3, 32, 32), [row])
    message = str(raised.value)
    assert "\n" not in message
    assert "'Is the circle red?'" in message and repr(row["prompt"]) in message
    assert "'It is crimson, I think.', not a yes/no answer" in message


def test_vlm_call_error_raises_or_is_masked_and_counted():
    client = FakeClient(
        {
            "Are there any circles in the image? Answer in one word.": FakeChatAnswer("yes"),
            "How many circles are in the image? Answer in one word.": FakeVlmCallError(
                "HTTP 503 from http://vlm:8000\nretry later"
            ),
        }
    )
    row = _first_row("single_object")
    with pytest.raises(
        VqaAnswerError,
        match=r"the call failed \(FakeVlmCallError: HTTP 503 from http://vlm:8000 "
        r"retry later\)",
    ):
        VqaJudge(VlmAnswerer(client)).judge(torch.rand(1, 3, 32, 32), [row])
    judge = VqaJudge(VlmAnswerer(client, on_failure="mask"))
    records = judge.judge(torch.rand(1, 3, 32, 32), [row])
    assert records[0]["masked"] and records[0]["score"] is None and records[0]["correct"] is None
    assert records[0]["atoms"][1]["p"] is None
    assert judge.table(records) == {"images": 1.0, "masked": 1.0}


def test_vlm_answerer_needs_a_server_or_a_client():
    with pytest.raises(ValueError, match="needs 'base_url' and 'model'"):
        VlmAnswerer()
    with pytest.raises(ValueError, match="on_failure must be one of"):
        VlmAnswerer(FakeClient({}), on_failure="ignore")
