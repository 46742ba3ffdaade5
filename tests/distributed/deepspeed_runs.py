"""Run by tests/distributed/test_deepspeed.py under `accelerate launch`: several `rlhf-img train` runs in one
launch, so the family matrix pays DeepSpeed's start-up once per ZeRO config instead of once per run. On 2 cores a
launch spends about 10 s starting (the launcher and each worker importing torch, transformers, TRL and DeepSpeed)
and about 2 s training a stand-in for 2 steps.

`deepspeed_runs.py PLAN.json`, PLAN a JSON list of `train` argument lists. Each run is `rlhf_img.cli.main(["train",
*argv])`, as the console script runs it. Between runs the process group stays up (the CLI tears it down when a run
ends; here that waits for the last run) and accelerate's state is reset, so the next trainer builds its own from
the launcher's environment as a fresh process would. Rank 0 prints `=== run K exit CODE` after run K, so a test
reads its own run's exit code and the stdout above the marker."""

import gc
import json
import os
import sys

import torch.distributed as dist
from accelerate.state import AcceleratorState, GradientState

from rlhf_img import training
from rlhf_img.cli import main


def run_all(plan: list[list[str]]) -> None:
    training.end_processes = lambda trainer: trainer.accelerator.wait_for_everyone()
    for index, argv in enumerate(plan):
        try:
            code = main(["train", *argv])
        except SystemExit as exit:  # argparse and recipe errors exit; the next run still runs
            code = exit.code if isinstance(exit.code, int) else 1
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"=== run {index} exit {code}", flush=True)
        AcceleratorState._reset_state()
        GradientState._reset_state()
        gc.collect()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        run_all(json.load(f))
