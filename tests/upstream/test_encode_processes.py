"""`rlhf-img encode` across processes: two processes under `accelerate launch` write what one process writes (shard
n by process n % 2), and a run killed with SIGKILL midway finishes on rerun with every pair encoded exactly once."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO

from .encode_helpers import CHECKPOINT, encode, render_pairs, write_image_folder

pytestmark = pytest.mark.slow  # real processes: a launcher, gloo, SIGKILL (seconds each)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _rows(output_dir) -> list[tuple]:
    from rlhf_img.upstream.shards import open_encoded

    dataset = open_encoded(str(output_dir))
    return list(zip(dataset["key"], dataset["caption"], map(tuple, dataset["actions"])))


def _encode_args(folder, output_dir, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        CHECKPOINT,
        "--dataset",
        str(folder),
        "--output_dir",
        str(output_dir),
        "--use_cpu",
        "true",
        *extra,
    ]


def test_two_processes_under_accelerate_launch_write_what_one_process_writes(tmp_path):
    write_image_folder(tmp_path / "pairs", render_pairs(30, seed=3))
    (tmp_path / "pairs" / "0004.png").write_bytes(b"corrupt")  # a skipped row in shard 0 (process 0)
    (tmp_path / "pairs" / "0013.png").write_bytes(b"")  # and one in shard 2 (process 0)
    (tmp_path / "pairs" / "0016.png").write_bytes(b"")  # and one in shard 3 (process 1)
    encode(tmp_path / "pairs", tmp_path / "one", shard_size=5)
    config = os.path.join(REPO, "recipes", "accelerate", "ddp.yaml")
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        config,
        "--num_processes",
        "2",
        "--main_process_port",
        "0",
        "-m",
        "rlhf_img.upstream.encode",
        *_encode_args(
            tmp_path / "pairs", tmp_path / "two", "--shard_size", "5", "--batch_size", "4", "--num_workers", "2"
        ),
    ]
    done = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert sum(line.startswith("rlhf-img: encoded 27 of 30 pairs into 6 shards") for line in output.splitlines()) == 1
    assert _rows(tmp_path / "two") == _rows(tmp_path / "one")
    with open(tmp_path / "one" / "encode.json") as f, open(tmp_path / "two" / "encode.json") as g:
        assert json.load(f) == json.load(g)
    for index in range(6):
        with open(tmp_path / "two" / "shards" / f"shard-{index:05d}.json") as f:
            assert json.load(f)["process"] == index % 2


def test_a_run_killed_midway_finishes_on_rerun_with_every_pair_encoded_once(tmp_path):
    count, shard_size = 200, 10
    write_image_folder(tmp_path / "pairs", render_pairs(count, seed=4))
    encode(tmp_path / "pairs", tmp_path / "reference", shard_size=shard_size)
    # one image per encoder call, no loader threads: slow enough to be killed between shards
    command = [
        sys.executable,
        "-m",
        "rlhf_img.upstream.encode",
        *_encode_args(
            tmp_path / "pairs",
            tmp_path / "out",
            "--shard_size",
            str(shard_size),
            "--batch_size",
            "1",
            "--num_workers",
            "0",
        ),
    ]
    third_shard = tmp_path / "out" / "shards" / "shard-00002.arrow"
    with open(tmp_path / "killed.log", "w") as log:  # a file, not a pipe: an unread pipe would block the bar
        process = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        while not third_shard.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    finished = len(glob.glob(str(tmp_path / "out" / "shards" / "*.arrow")))
    assert 3 <= finished < count // shard_size and not (tmp_path / "out" / "encode.json").exists()
    summary = encode(tmp_path / "pairs", tmp_path / "out", shard_size=shard_size)
    assert summary["reused_shards"] == finished
    assert summary["encoded_this_run"] == count - finished * shard_size
    rows = _rows(tmp_path / "out")
    assert len({key for key, *_ in rows}) == len(rows) == count
    assert rows == _rows(tmp_path / "reference")
    assert not glob.glob(str(tmp_path / "out" / "shards" / "*.tmp*"))
