import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow  # runs bench/rollouts.py in a subprocess with transformers generate
def test_rollout_benchmark_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "bench", "rollouts.py"),
            "--batch",
            "4",
            "--group",
            "2",
            "--grid",
            "2",
            "--codebook_size",
            "64",
            "--text_vocab",
            "1000",
            "--hidden_size",
            "32",
            "--num_layers",
            "1",
            "--num_heads",
            "2",
            "--families",
            "none",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert set(figures) >= {
        "ours_tok_s",
        "hf_generate_tok_s",
        "ratio",
        "peer_loop_tok_s",
        "ratio_vs_peer_loop",
        "bytes_per_step",
        "weight_bytes",
        "kv_bytes_per_step",
    }
    assert figures["ours_tok_s"] > 0 and figures["hf_generate_tok_s"] > 0 and figures["peer_loop_tok_s"] > 0
    assert abs(figures["ratio"] - figures["ours_tok_s"] / figures["hf_generate_tok_s"]) < 1e-6 * figures["ratio"]
    versus_peer = figures["ours_tok_s"] / figures["peer_loop_tok_s"]
    assert abs(figures["ratio_vs_peer_loop"] - versus_peer) < 1e-6 * versus_peer
    # the default samplers on CPU: 'auto' (= shared) and the static cache, each a row beside the two baselines
    assert set(figures["methods"]) == {"hf_generate", "peer_loop", "ours_shared", "ours_static"}
    assert figures["ours_sampler"] == "shared"
    # decode-step bound of the 1-layer, 32-wide Qwen2 (2 heads, 1 KV head of 16, MLP 64, float32), counted by hand:
    # q 32x32+32, k and v 32x16+16, o 32x32, MLP 3 x 32x64, 3 norms of 32 -> 9,376 weights; + 64 head rows x 32
    assert figures["weight_bytes"] == (9376 + 64 * 32) * 4
    # K and V of 1 layer, 8 rows (4 images + their CFG rows), 1 head of 16 floats: 1,024 bytes per position;
    # the 3 decode steps attend over the prompt plus 1, 2, 3 positions (mean prompt + 2)
    prompt_positions = figures["kv_bytes_per_step"] / 1024 - 2
    assert prompt_positions == int(prompt_positions) >= 1 and figures["decode_steps"] == 3
    assert figures["bytes_per_step"] == figures["weight_bytes"] + figures["kv_bytes_per_step"]
    for label in (
        "transformers generate + CFG",
        "peer-style loop",
        "rlhf-img, sampler=shared",
        "rlhf-img, sampler=static",
        "decode-step bound",
    ):
        assert label in result.stdout


def test_rollout_benchmark_rejects_an_unknown_sampler(monkeypatch, capsys):
    import runpy

    import pytest

    monkeypatch.setattr(sys, "argv", ["rollouts.py", "--samplers", "fastest"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(REPO, "bench", "rollouts.py"), run_name="__main__")
    assert exit_info.value.code == 2 and "--samplers: ['fastest']" in capsys.readouterr().err


@pytest.mark.slow  # runs bench/rollouts.py in a subprocess on two families
def test_rollout_benchmark_times_every_sampler_on_janus_llamagen_and_emu3_shaped_models(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "bench", "rollouts.py"),
            "--batch",
            "4",
            "--group",
            "2",
            "--grid",
            "4",
            "--codebook_size",
            "64",
            "--hidden_size",
            "32",
            "--num_layers",
            "1",
            "--num_heads",
            "2",
            "--baselines",
            "",
            "--family_samplers",
            "shared,static",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())["families"]
    assert set(figures) == {"janus", "llamagen", "emu3"}
    for table in figures.values():
        assert table["image_tokens"] == 16 and set(table["samplers"]) == {"plain", "shared", "static"}
        for row in table["samplers"].values():  # one seed, the same tokens whatever the loop
            assert row["same_tokens_as_plain"] and row["identical_images"] == row["images"] == 4 and row["seconds"] > 0
            assert row["max_logp_difference_before_divergence"] < 1e-4
            assert abs(row["speedup_vs_plain"] - table["samplers"]["plain"]["seconds"] / row["seconds"]) < 1e-9
    assert "janus     static" in result.stdout and "llamagen  shared" in result.stdout and "emu3" in result.stdout
