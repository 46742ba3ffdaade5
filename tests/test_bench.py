import json
import os
import subprocess
import sys

from conftest import REPO


def test_rollout_benchmark_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "rollouts.py"), "--batch", "4", "--group", "2", "--grid", "2",
         "--codebook_size", "64", "--text_vocab", "1000", "--hidden_size", "32", "--num_layers", "1",
         "--num_heads", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert set(figures) >= {"ours_tok_s", "hf_generate_tok_s", "ratio"}
    assert figures["ours_tok_s"] > 0 and figures["hf_generate_tok_s"] > 0
    assert abs(figures["ratio"] - figures["ours_tok_s"] / figures["hf_generate_tok_s"]) < 1e-6
    assert "rlhf-img (batched CFG, KV cache)" in result.stdout
