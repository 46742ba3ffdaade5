import json

import pytest

from rlhf_img.data import load_prompt_dataset


def test_text_file_one_prompt_a_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat\n\n  a dog  \n")
    assert load_prompt_dataset(str(path))["prompt"] == ["a cat", "a dog"]


def test_jsonl_keeps_metadata_columns(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"text": "a cat", "tag": "single_object", "include": [{"class": "cat", "count": 1}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    dataset = load_prompt_dataset(str(path), prompt_column="text")
    assert dataset.column_names == ["tag", "include", "prompt"] or set(dataset.column_names) == {
        "prompt",
        "tag",
        "include",
    }
    assert dataset[0]["prompt"] == "a cat" and dataset[0]["tag"] == "single_object"


def test_datasets_folders_and_tables(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_dict({"prompt": ["p1", "p2", "p3"]}).save_to_disk(str(tmp_path / "ds"))
    assert load_prompt_dataset(str(tmp_path / "ds"))["prompt"] == ["p1", "p2", "p3"]
    DatasetDict({"test": Dataset.from_dict({"caption": ["q"]})}).save_to_disk(str(tmp_path / "dd"))
    assert load_prompt_dataset(str(tmp_path / "dd"), split="test", prompt_column="caption")["prompt"] == ["q"]
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,tag\na cat,single\n")
    assert load_prompt_dataset(str(csv))[0] == {"prompt": "a cat", "tag": "single"}
    parquet = tmp_path / "p.parquet"
    Dataset.from_dict({"prompt": ["p1", "p2", "p3"]}).to_parquet(str(parquet))
    assert load_prompt_dataset(str(parquet), max_prompts=2)["prompt"] == ["p1", "p2"]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_prompt_dataset(str(tmp_path / "nope.txt"))


def test_missing_prompt_column_is_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"caption": "x"}))
    with pytest.raises(ValueError, match="no column 'prompt'"):
        load_prompt_dataset(str(path))
