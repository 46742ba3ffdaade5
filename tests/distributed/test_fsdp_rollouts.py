"""FSDP2 on CPU (gloo), through torch directly: accelerate 1.16 runs FSDP only on GPU process groups (with
`use_cpu: true` it silently falls back to DDP), so the sharded rollout path is checked here without it. The
samplers bypass the root module's forward; `rlhf_img.fsdp.unsharded_root` gathers what they need."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # several processes over gloo (torchrun / accelerate launch), seconds each


@pytest.mark.timeout(240)
def test_fsdp2_sharded_policy_samples_scores_and_backprops_like_the_unsharded_one(tiny_checkpoint):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        os.path.join(REPO, "tests", "distributed", "fsdp_worker.py"),
        tiny_checkpoint,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=200)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert output.count("FSDP2 rollout, log-probs and") == 2, output[-2000:]
