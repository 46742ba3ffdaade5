"""The shipped accelerate configs (recipes/accelerate/*.yaml) load with accelerate's own loader, use only options its
launcher knows, and resolve to the launch mode their name says. (DDP is also run on CPU, in
tests/distributed/test_process_invariance.py; DeepSpeed and FSDP need GPUs and are not run here.)"""

import os

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from conftest import REPO

CONFIGS = os.path.join(REPO, "recipes", "accelerate")
EXPECTED = {
    "ddp": (DistributedType.MULTI_GPU, None),
    "zero2": (DistributedType.DEEPSPEED, 2),
    "zero3": (DistributedType.DEEPSPEED, 3),
    "fsdp": (DistributedType.FSDP, None),
}


def test_every_shipped_config_is_covered():
    assert sorted(name[:-5] for name in os.listdir(CONFIGS) if name.endswith(".yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_and_resolves_to_its_launch_mode(name):
    path = os.path.join(CONFIGS, f"{name}.yaml")
    config = load_config_from_file(path)  # raises on an unknown top-level key or distributed type
    distributed_type, zero_stage = EXPECTED[name]
    assert config.distributed_type == distributed_type
    options = {action.dest for action in launch_command_parser()._actions}
    nested = {**(config.deepspeed_config or {}), **(config.fsdp_config or {})}
    assert not set(nested) - options, f"{name}.yaml: options `accelerate launch` does not know: {set(nested) - options}"

    # what `accelerate launch --config_file <path> script.py` would do with it
    args = launch_command_parser().parse_args(["--config_file", path, "script.py"])
    args, _, _ = _validate_launch_command(args)
    assert (args.multi_gpu, args.use_deepspeed, args.use_fsdp) == (
        distributed_type == DistributedType.MULTI_GPU,
        distributed_type == DistributedType.DEEPSPEED,
        distributed_type == DistributedType.FSDP,
    )
    if zero_stage is not None:
        assert args.zero_stage == zero_stage
    if name == "zero3":  # SimpleAR's GRPO setting
        assert args.zero3_init_flag and args.zero3_save_16bit_model and args.mixed_precision == "bf16"
