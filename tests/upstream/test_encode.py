"""`rlhf-img encode` output, bad rows, resume and the command line (in this process, on CPU)."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from .encode_helpers import CHECKPOINT, encode, expected_actions, load_shapes_policy, render_pairs, write_image_folder

COUNT = 20


@pytest.fixture(scope="module")
def pairs():
    return render_pairs(COUNT, seed=2)


@pytest.fixture(scope="module")
def folder(pairs, tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    write_image_folder(root, pairs)
    return root


def _rows(output_dir) -> list[tuple]:
    from rlhf_img.upstream.shards import open_encoded

    dataset = open_encoded(str(output_dir))
    return list(zip(dataset["key"], dataset["caption"], map(tuple, dataset["actions"]), dataset["height"]))


def _error_lines(stderr: str) -> list[str]:
    """The command's error lines (stderr also carries transformers' weight-loading bar)."""
    return [line for line in stderr.splitlines() if line.startswith("rlhf-img: error:")]


def test_open_encoded_memory_maps_the_shards_in_output_dir_in_input_order(folder, pairs, tmp_path):
    from datasets.table import MemoryMappedTable

    from rlhf_img.upstream.shards import open_encoded

    encode(folder, tmp_path / "out", shard_size=6)
    dataset = open_encoded(str(tmp_path / "out"))
    shard_files = sorted(glob.glob(str(tmp_path / "out" / "shards" / "*.arrow")))
    assert len(shard_files) == 4  # 20 rows, 6 per shard
    assert sorted(entry["filename"] for entry in dataset.cache_files) == shard_files
    assert all(isinstance(block, MemoryMappedTable) for row in dataset.data.blocks for block in row)
    assert dataset["key"] == [f"{index:04d}" for index in range(COUNT)]
    np.testing.assert_array_equal(
        np.array(dataset["actions"]), expected_actions(load_shapes_policy(), [image for _, image in pairs])
    )
    assert dataset.features["actions"].length == 64


def test_a_folder_whose_encode_did_not_finish_is_refused_by_open_encoded(folder, tmp_path):
    from rlhf_img.upstream.shards import open_encoded

    encode(folder, tmp_path / "out", shard_size=6)
    os.remove(tmp_path / "out" / "encode.json")
    with pytest.raises(FileNotFoundError, match="did not finish"):
        open_encoded(str(tmp_path / "out"))


def test_bad_images_are_skipped_listed_by_key_and_reason_and_printed_on_one_line(pairs, tmp_path, capsys):
    from rlhf_img.upstream.encode import main
    from rlhf_img.upstream.shards import EncodedInfo

    root = tmp_path / "pairs"
    write_image_folder(root, pairs[:10])
    (root / "0003.png").write_bytes(b"this is not a png")  # corrupt
    (root / "0005.png").write_bytes(b"")  # zero size
    data = (root / "0007.png").read_bytes()
    (root / "0007.png").write_bytes(data[: len(data) // 2])  # truncated
    os.remove(root / "0008.txt")  # no caption
    code = main(
        [
            "--model_name_or_path",
            CHECKPOINT,
            "--dataset",
            str(root),
            "--output_dir",
            str(tmp_path / "out"),
            "--shard_size",
            "4",
            "--use_cpu",
            "true",
        ]
    )
    assert code == 0
    line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("rlhf-img: encoded")]
    assert len(line) == 1 and "encoded 6 of 10 pairs" in line[0] and "skipped 4: 0003 (" in line[0]
    info = EncodedInfo.read(str(tmp_path / "out"))
    reasons = {entry["key"]: entry["reason"] for entry in info.skipped}
    assert sorted(reasons) == ["0003", "0005", "0007", "0008"]
    assert "cannot identify image file" in reasons["0003"]
    assert "0 bytes" in reasons["0005"]
    assert "truncated" in reasons["0007"] or "Error" in reasons["0007"]
    assert "no caption" in reasons["0008"]
    assert [entry["shard"] for entry in info.skipped] == [0, 1, 1, 2]
    with open(tmp_path / "out" / "shards" / "shard-00001.json") as f:
        assert [entry["key"] for entry in json.load(f)["skipped"]] == ["0005", "0007"]
    assert [key for key, *_ in _rows(tmp_path / "out")] == ["0000", "0001", "0002", "0004", "0006", "0009"]


def test_a_table_row_naming_a_missing_file_is_skipped_with_the_path(pairs, tmp_path):
    from rlhf_img.upstream.shards import EncodedInfo

    write_image_folder(tmp_path / "images", pairs[:3], captions="none")
    rows = [
        {"image": "images/0000.png", "caption": "a"},
        {"image": "images/gone.png", "caption": "b"},
        {"image": "images/0002.png", "caption": None},
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n{not json\n")
    encode(tmp_path / "pairs.jsonl", tmp_path / "out")
    skipped = {entry["key"]: entry["reason"] for entry in EncodedInfo.read(str(tmp_path / "out")).skipped}
    assert "not found" in skipped["images/gone.png"] and "gone.png" in skipped["images/gone.png"]
    assert "no caption" in skipped["images/0002.png"]
    assert "invalid JSON" in skipped["3"]
    assert [key for key, *_ in _rows(tmp_path / "out")] == ["images/0000.png"]


def test_rerun_after_a_kill_redoes_only_unfinished_shards_and_encodes_every_pair_once(folder, tmp_path, monkeypatch):
    """A kill leaves a half-written temporary file, and possibly a sidecar without its Arrow file: the rerun
    redoes exactly those shards (their images only are loaded) and the result equals an uninterrupted run."""
    from rlhf_img.upstream import encode as encode_module

    encode(folder, tmp_path / "out", shard_size=6)
    reference = _rows(tmp_path / "out")
    shards = tmp_path / "out" / "shards"
    os.remove(tmp_path / "out" / "encode.json")
    os.replace(shards / "shard-00001.arrow", shards / "shard-00001.arrow.tmp-12345")  # killed while writing
    os.remove(shards / "shard-00003.arrow")  # killed between the sidecar and the rename
    loaded = []
    prepare = encode_module.prepare_row
    monkeypatch.setattr(encode_module, "prepare_row", lambda row, size: (loaded.append(row.key), prepare(row, size))[1])
    summary = encode(folder, tmp_path / "out", shard_size=6)
    assert sorted(loaded) == [f"{index:04d}" for index in (*range(6, 12), *range(18, 20))]
    assert summary["reused_shards"] == 2 and summary["encoded_this_run"] == 8
    assert _rows(tmp_path / "out") == reference
    assert not glob.glob(str(shards / "*.tmp*"))
    summary = encode(folder, tmp_path / "out", shard_size=6)  # nothing left to do
    assert summary["encoded_this_run"] == 0 and summary["reused_shards"] == 4


def test_rerun_with_other_settings_into_the_same_folder_exits_2_naming_the_setting(folder, tmp_path, capsys):
    from rlhf_img.upstream.encode import main

    encode(folder, tmp_path / "out", shard_size=6)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--model_name_or_path",
                CHECKPOINT,
                "--dataset",
                str(folder),
                "--output_dir",
                str(tmp_path / "out"),
                "--shard_size",
                "5",
                "--use_cpu",
                "true",
            ]
        )
    assert exit_info.value.code == 2
    error = _error_lines(capsys.readouterr().err)
    assert len(error) == 1 and "shard_size" in error[0] and "other settings" in error[0]


def test_max_examples_encodes_the_first_rows_only(folder, tmp_path):
    summary = encode(folder, tmp_path / "out", max_examples=7, num_workers=0)
    assert summary["num_rows"] == 7 and summary["num_shards"] == 1
    assert [key for key, *_ in _rows(tmp_path / "out")] == [f"{index:04d}" for index in range(7)]


def test_recipe_file_and_overrides_parse_like_train(folder, tmp_path, capsys):
    from conftest import write_recipe

    from rlhf_img.upstream.encode import main

    recipe = write_recipe(
        tmp_path / "encode.yaml",
        model_name_or_path=CHECKPOINT,
        dataset=str(folder),
        output_dir=str(tmp_path / "out"),
        shard_size=100,
        use_cpu=True,
    )
    assert main([recipe, "--shard_size", "8", "--max_examples", "9"]) == 0
    with open(tmp_path / "out" / "encode.json") as f:
        info = json.load(f)
    assert (info["shard_size"], info["num_rows"], len(info["shards"])) == (8, 9, 2)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shard_sizes", "3"], "unknown option"),
        (["--dataset", "/nowhere/pairs.jsonl"], "not found: /nowhere/pairs.jsonl"),
        (["--dataset", "{folder}", "--image_column", "img", "--dataset", "{table}"], "no column 'img'"),
        (["--dataset", "{folder}", "--shard_size", "0"], "shard_size must be >= 1"),
        (["--dataset", "{folder}", "--model_name_or_path", "/nowhere/ckpt"], "/nowhere/ckpt"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(argv, message, folder, tmp_path, capsys):
    from rlhf_img.upstream.encode import main

    (tmp_path / "t.jsonl").write_text('{"image": "a.png", "caption": "x"}\n')
    argv = [token.format(folder=folder, table=tmp_path / "t.jsonl") for token in argv]
    base = ["--model_name_or_path", CHECKPOINT, "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"]
    with pytest.raises(SystemExit) as exit_info:
        main(base + argv)
    assert exit_info.value.code == 2
    error = _error_lines(capsys.readouterr().err)
    assert len(error) == 1 and message in error[0], error
    assert not os.path.exists(tmp_path / "out")


def test_help_explains_inputs_output_and_every_key(capsys):
    from rlhf_img.upstream.encode import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rlhf-img encode RECIPE.yaml")
    for word in (
        "webdataset",
        "encode.json",
        "open_encoded",
        "--shard_size",
        "--batch_size",
        "--num_workers",
        "--key_column",
        "--model_family",
        "--family_config",
        "resume",
    ):
        assert word in out, word


def test_rerun_after_the_input_changed_refuses_to_reuse_shards_of_moved_rows(pairs, tmp_path):
    from rlhf_img.upstream.shards import ShardPlanError

    write_image_folder(tmp_path / "pairs", pairs[:12])
    encode(tmp_path / "pairs", tmp_path / "out", shard_size=4)
    os.remove(tmp_path / "out" / "shards" / "shard-00002.arrow")  # a shard to redo, so the rerun has work
    pairs[0][1].save(tmp_path / "pairs" / "0000b.png")  # sorts into shard 0: every later row moves by one
    (tmp_path / "pairs" / "0000b.txt").write_text("a new pair")
    with pytest.raises(ShardPlanError, match="shard 0 was encoded from other rows"):
        encode(tmp_path / "pairs", tmp_path / "out", shard_size=4)
    assert not (tmp_path / "out" / "shards" / "shard-00002.arrow").exists()  # nothing written
