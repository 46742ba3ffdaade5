"""Text-rendering prompt files: the shipped train/test sets and the reader's errors."""

import os

import pytest
from conftest import REPO

from rlhf_img.eval.text_prompts import read_text_prompts

PROMPTS = os.path.join(REPO, "recipes", "prompts")


def test_shipped_sets_have_one_quoted_target_of_one_to_five_words_and_share_no_target():
    train = read_text_prompts(os.path.join(PROMPTS, "text-rendering-train.txt"))
    test = read_text_prompts(os.path.join(PROMPTS, "text-rendering-test.txt"))
    assert len(train) >= 200 and len(test) >= 50
    for row in train + test:
        assert row["prompt"].count('"') == 2, row["prompt"]
        assert 1 <= len(row["text"].split()) <= 5, row["text"]
        assert f'"{row["text"]}"' in row["prompt"]
    assert len({row["prompt"] for row in train}) == len(train)
    assert not {row["text"].lower() for row in train} & {row["text"].lower() for row in test}


def test_a_line_without_a_quoted_target_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text('a sign that reads "Open Late"\n\n  a poster saying "Sold Out"  \na sign with no text\n')
    with pytest.raises(ValueError, match=rf"^{path}:4: no double-quoted target text in 'a sign with no text'"):
        read_text_prompts(str(path))
    path.write_text('a sign that reads "Open Late"\n\n  a poster saying "Sold Out"  \n')
    assert read_text_prompts(str(path)) == [
        {"prompt": 'a sign that reads "Open Late"', "text": "Open Late"},
        {"prompt": 'a poster saying "Sold Out"', "text": "Sold Out"},
    ]
    path.write_text('an empty sign reading ""\n')
    with pytest.raises(ValueError, match=":1: no double-quoted target text"):
        read_text_prompts(str(path))


def test_missing_or_empty_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_text_prompts(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty.txt: no prompts"):
        read_text_prompts(str(tmp_path / "empty.txt"))
