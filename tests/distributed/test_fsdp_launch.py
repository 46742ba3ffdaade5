"""FSDP through accelerate on this CPU: what accelerate 1.16 does with `recipes/accelerate/fsdp.yaml`, locked.

`AcceleratorState` switches to `DistributedType.FSDP` only when the process group is a multi-accelerator one
(MULTI_GPU, MULTI_XPU, ..., MULTI_NEURON); a gloo CPU group (MULTI_CPU) is not in that list. So with `use_cpu`
the FSDP config runs as plain DDP, and without it, on a machine with no GPU, each launched process runs alone
(`DistributedType.NO`), which `rlhf-img train` refuses. FSDP2 itself is tested on CPU by calling torch's
`fully_shard` directly (`test_fsdp_rollouts.py`). If accelerate starts sharding on CPU, the first test fails and
the README's Scaling table must change with it."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # launches two processes per case

PROBE = """
import torch
from accelerate import Accelerator
accelerator = Accelerator(cpu=True)
model = accelerator.prepare(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)))
with open(f"resolved_{accelerator.process_index}.txt", "w") as f:  # one file per process: stdout interleaves
    f.write(f"{accelerator.distributed_type} {type(model).__name__}")
"""


def _launch(*arguments: str, cwd) -> subprocess.CompletedProcess:
    command = [
        os.path.join(os.path.dirname(sys.executable), "accelerate"),
        "launch",
        "--config_file",
        os.path.join(REPO, "recipes", "accelerate", "fsdp.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        "0",
        *arguments,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_the_fsdp_config_on_cpu_resolves_to_ddp_over_gloo(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    result = _launch(str(probe), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for rank in (0, 1):
        assert (tmp_path / f"resolved_{rank}.txt").read_text() == "DistributedType.MULTI_CPU DistributedDataParallel"


def test_processes_that_accelerate_leaves_unjoined_stop_the_run_with_one_line(tmp_path):
    result = _launch(
        "-m",
        "rlhf_img.cli",
        "train",
        os.path.join(REPO, "recipes", "tiny-random-jpeg.yaml"),
        "--use_cpu",
        "false",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "32",
        "--output_dir",
        str(tmp_path / "out"),
        cwd=REPO,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("rlhf-img: error")]
    assert errors == [
        "rlhf-img: error: 2 processes were launched but accelerate runs 1 (distributed type "
        "DistributedType.NO): each would train alone; on a CPU set use_cpu: true (gloo), with GPUs "
        "check the launch config"
    ]
    assert not (tmp_path / "out" / "trainer_state.json").exists()
