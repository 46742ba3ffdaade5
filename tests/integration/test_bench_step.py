import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

STAGES = ("sample", "decode", "reward", "old_ref_logprobs", "forward_backward", "optimizer")


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_step", os.path.join(REPO, "bench", "step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # runs bench/step.py in a subprocess (LoRA and full steps)
def test_step_benchmark_times_every_stage_of_a_lora_and_a_full_grpo_step(tmp_path):
    out = tmp_path / "step.json"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "bench", "step.py"),
            "--hidden_size",
            "16",
            "--num_layers",
            "1",
            "--num_heads",
            "2",
            "--num_kv_heads",
            "1",
            "--intermediate_size",
            "32",
            "--text_vocab",
            "300",
            "--cosmos_channels",
            "4",
            "--grids",
            "1,2",
            "--groups",
            "2",
            "--modes",
            "lora,full",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = {(r["mode"], r["grid"]): r for r in report["results"]}
    assert set(runs) == {("lora", 1), ("lora", 2), ("full", 1), ("full", 2)}
    for run in runs.values():
        assert run["tokens"] == run["grid"] ** 2 and run["batch"] == 2
        assert run["parameters"] > 300 * 16  # the embedding alone: (300 + 64,000) x 16
        for stage in STAGES:
            figures = run["stages"][stage]
            assert figures["seconds"] > 0 and figures["peak_mib"] > 0, (run["mode"], stage, figures)
        assert run["stages"]["old_ref_logprobs"]["calls"] == 2  # num_iterations 2: old; beta > 0: reference
        assert abs(run["step_seconds"] - sum(run["stages"][s]["seconds"] for s in STAGES)) < 1e-3
    assert runs["lora", 1]["trainable_parameters"] < runs["full", 1]["trainable_parameters"]
    assert runs["full", 1]["trainable_parameters"] == runs["full", 1]["parameters"]
    assert set(report["scaling_with_tokens"]) == {"lora", "full"}
    assert "scaling with tokens T (lora)" in result.stdout and "forward_backward" in result.stdout


def test_scaling_exponents_are_log_log_slopes_between_the_extremes():
    bench = _bench_module()

    def run(tokens, group, seconds):
        return {
            "mode": "lora",
            "tokens": tokens,
            "group": group,
            "step_seconds": sum(seconds.values()),
            "stages": {s: {"seconds": seconds.get(s, 0.0)} for s in STAGES},
        }

    results = [run(t, g, {"sample": t * g, "forward_backward": t * t * g}) for t in (16, 64) for g in (2, 8)]
    with_tokens = bench.scaling_exponents(results, "tokens", "group")["lora"]
    with_group = bench.scaling_exponents(results, "group", "tokens")["lora"]
    assert with_tokens["sample"] == 1.0 and with_tokens["forward_backward"] == 2.0
    assert with_group["sample"] == 1.0 and with_group["forward_backward"] == 1.0
    assert "decode" not in with_tokens  # a stage that took no time has no slope
