"""`rlhf-img encode RECIPE [--key value ...]`: image/caption pairs -> the family's actions, in Arrow shards.

Every later upstream stage (SFT / pretraining, DPO on images) trains on `policy.encode_images` of its images;
encoding once, here, keeps the visual tokenizer's encoder out of the training loop and makes the data a
memory-mapped table (`shards.open_encoded`). At dataset scale the run is a stream: rows are read lazily
(`image_sources`), decoded and fitted in a thread pool a few batches ahead of the encoder, and written shard by
shard, so memory stays flat in the number of pairs. Shard `n` holds input rows `[n*shard_size, (n+1)*shard_size)`
and belongs to process `n % world_size`; finished shards are kept and skipped on a rerun, so a killed run
resumes where it stopped (see `shards.py` for the crash-safety rules).
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch

from ..config import FamilyOptions
from .image_rows import PreparedRow, SourceRow, prepare_row
from .image_sources import ImageSource, SourceError, open_source
from .shards import (
    INFO_FILE,
    SHARDS_FOLDER,
    KeysDigest,
    ShardPlanError,
    ShardWriter,
    collect_info,
    finished_shards,
)

DESCRIPTION = (
    "Encode image/caption pairs into the family's actions (what `policy.encode_images` returns: VQ codes, "
    "Infinity's bits) once, for SFT / DPO. Input (`dataset`): a folder of images with same-stem .txt captions or a "
    "metadata.jsonl/csv; a .jsonl/.json/.csv/.parquet table of image paths (relative to the file) and captions; a "
    "`datasets` save_to_disk folder or hub name; webdataset .tar shards (a file, a glob or a folder). Images are "
    "turned upright (EXIF), converted to RGB, resized to cover the policy's image size and centre-cropped. "
    "Output: OUTPUT_DIR/shards/shard-NNNNN.arrow (key, caption, actions, height, width; memory-mapped by "
    "`rlhf_img.upstream.shards.open_encoded`) and OUTPUT_DIR/encode.json. A rerun keeps finished shards (resume "
    "after a kill); bad images are skipped and listed by key. Several processes: `accelerate launch` or `torchrun "
    "--nproc_per_node N -m rlhf_img.upstream.encode RECIPE` (shard n on process n % N)."
)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class EncodeConfig(FamilyOptions):
    """The `rlhf-img encode` recipe keys (plus `model_family`, `visual_tokenizer`, `family_config` from
    `FamilyOptions`, shared with training and eval)."""

    model_name_or_path: str = field(
        default="",
        metadata={"help": "Checkpoint whose visual tokenizer encodes the images (local folder or hub id). Required."},
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Weights dtype, e.g. bfloat16; default: the family's "
            "(float32 for causal_vq). Part of the shard plan."
        },
    )
    dataset: str = field(
        default="",
        metadata={
            "help": "Image/caption pairs: an image folder (.txt captions or "
            "metadata.jsonl/csv), a .jsonl/.json/.csv/.parquet table, a `datasets` "
            "save_to_disk folder or hub name, or webdataset .tar shards (file, "
            "glob or folder). Required."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Config name of a hub dataset."})
    dataset_split: str = field(
        default="train", metadata={"help": "Split of a hub dataset or save_to_disk DatasetDict."}
    )
    image_column: str = field(
        default="image",
        metadata={
            "help": "Table/dataset column with the image (a path "
            "relative to the table file, bytes, or an Image feature)."
        },
    )
    caption_column: str = field(
        default="caption",
        metadata={
            "help": "Table/dataset column with the caption; also the "
            "key read from metadata.jsonl/csv and webdataset .json."
        },
    )
    key_column: str | None = field(
        default=None,
        metadata={
            "help": "Column with a unique row key; default: the image "
            "path, else the row number (folders and tars: the file "
            "key)."
        },
    )
    output_dir: str = field(
        default="",
        metadata={
            "help": "Where encode.json and shards/ go. Required. A rerun into "
            "the same folder resumes (finished shards are kept)."
        },
    )
    shard_size: int = field(
        default=5000, metadata={"help": "Input rows per shard (the unit of resume and of work per process)."}
    )
    batch_size: int = field(default=32, metadata={"help": "Images per `encode_images` call."})
    max_examples: int | None = field(default=None, metadata={"help": "Encode only the first N input rows."})
    num_workers: int = field(
        default=4,
        metadata={"help": "Threads that read, decode and resize images ahead of the encoder (0: in the main thread)."},
    )
    prefetch_batches: int = field(
        default=2,
        metadata={
            "help": "Batches of images decoded ahead of the encoder; memory grows with it, not with the dataset."
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Seeds torch and friends before encoding (for a stochastic "
            "encoder; the built-in ones are deterministic)."
        },
    )
    use_cpu: bool = field(default=False, metadata={"help": "Encode on CPU even when an accelerator is present."})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("shard_size", "batch_size", "prefetch_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"max_examples must be >= 1, got {self.max_examples}")


def ordered_map(
    function: Callable[[Item], Result], items: Iterable[Item], num_workers: int, lookahead: int
) -> Iterator[Result]:
    """`map(function, items)` in order, computed by `num_workers` threads at most `lookahead` items ahead (PIL
    decodes and resizes outside the GIL). Memory: `lookahead` results, whatever the length of `items`."""
    if num_workers == 0:
        yield from map(function, items)
        return
    pool = ThreadPoolExecutor(num_workers, thread_name_prefix="encode-load")
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= lookahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Scan:
    """The rows this process encodes, `(shard, row)`, from a walk over the whole stream; `num_rows` is the
    stream's length once the walk has ended (every process walks it, so all agree on the shard count)."""

    def __init__(self, source: ImageSource, max_examples: int | None, shard_size: int, owns: Callable[[int], bool]):
        self.source, self.max_examples, self.shard_size, self.owns = source, max_examples, shard_size, owns
        self.num_rows: int | None = None

    def __iter__(self) -> Iterator[tuple[int, SourceRow]]:
        count = 0
        for count, row in enumerate(itertools.islice(self.source, self.max_examples), start=1):
            shard = (count - 1) // self.shard_size
            if self.owns(shard):
                yield shard, row
        self.num_rows = count


def _plan(
    config: EncodeConfig, family: str, source: ImageSource, image_size: tuple[int, int], num_actions: int
) -> dict:
    """The settings that decide what a shard holds: a rerun must match them to reuse its finished shards."""

    def local(path: str | None) -> str | None:  # the same folder named from another working directory is the same
        return os.path.abspath(path) if path and os.path.exists(path) else path

    return {
        "family": family,
        "checkpoint": local(config.model_name_or_path),
        "visual_tokenizer": local(config.visual_tokenizer),
        "family_config": config.family_config,
        "dtype": config.dtype,
        "image_size": list(image_size),
        "num_actions": num_actions,
        "source": os.path.abspath(config.dataset) if source.kind == "webdataset" else local(config.dataset),
        "source_kind": source.kind,
        "image_column": config.image_column,
        "caption_column": config.caption_column,
        "key_column": config.key_column,
        "shard_size": config.shard_size,
        "max_examples": config.max_examples,
    }


def check_finished_keys(source: ImageSource, finished: dict[int, dict], shard_size: int, output_dir: str) -> None:
    """`ShardPlanError` if a finished shard was encoded from other rows than the input holds at its positions
    now (files added to or removed from a folder since). Walks the keys only, up to the last finished shard."""
    if not finished:
        return
    last, digests = max(finished), {}
    for index, row in enumerate(itertools.islice(source, (last + 1) * shard_size)):
        shard = index // shard_size
        if shard in finished:
            digests.setdefault(shard, KeysDigest()).add(row.key)
    for shard, record in sorted(finished.items()):
        digest = digests.get(shard)
        if digest is None or digest.hexdigest() != record.get("keys_sha256"):
            raise ShardPlanError(
                f"{output_dir}: shard {shard} was encoded from other rows than the input now holds "
                f"at rows {record['rows']} (was it changed since?); use another output_dir or "
                "delete it"
            )


def _family(config: EncodeConfig) -> str:
    if config.model_family:
        return config.model_family
    from ..families import detect_family

    return detect_family(config.model_name_or_path)


def _owned_rows(num_rows: int | None, shard_size: int, owns: Callable[[int], bool]) -> int | None:
    """Rows this process will encode, when the stream's length is known up front (for the progress bar)."""
    if num_rows is None:
        return None
    return sum(
        min(shard_size, num_rows - shard * shard_size) for shard in range(-(-num_rows // shard_size)) if owns(shard)
    )


class _Encoder:
    """Batches fitted images into `policy.encode_images` and writes the actions into the current shard."""

    def __init__(self, policy, config: EncodeConfig, plan: dict, device: torch.device, process_index: int) -> None:
        self.policy, self.config, self.plan, self.device = policy, config, plan, device
        self.process_index = process_index
        self.num_actions = plan["num_actions"]
        self.writer: ShardWriter | None = None
        self.batch: list[PreparedRow] = []
        self.encoded = 0

    def add(self, shard: int, row: PreparedRow) -> None:
        if self.writer is None or self.writer.index != shard:
            self.finish_shard((self.writer.index + 1) * self.config.shard_size if self.writer else 0)
            self.writer = ShardWriter(
                self.config.output_dir,
                shard,
                shard * self.config.shard_size,
                self.plan,
                self.num_actions,
                self.process_index,
            )
        self.writer.keys.add(row.key)
        if row.reason is not None:
            self.writer.skip(row.key, row.reason)
            return
        self.batch.append(row)
        if len(self.batch) == self.config.batch_size:
            self.flush()

    @torch.no_grad()
    def flush(self) -> None:
        if not self.batch:
            return
        pixels = torch.from_numpy(np.stack([row.pixels for row in self.batch]))  # (B, H, W, 3) uint8
        images = pixels.to(self.device).permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W) in [0, 1]
        actions = self.policy.encode_images(images)  # (B, T) long
        if tuple(actions.shape) != (len(self.batch), self.num_actions):
            raise RuntimeError(
                f"encode_images returned actions of shape {tuple(actions.shape)} for "
                f"{len(self.batch)} images; the policy says {self.num_actions} actions per image"
            )
        actions = actions.cpu()
        if actions.numel() and (actions.min() < np.iinfo(np.int32).min or actions.max() > np.iinfo(np.int32).max):
            raise RuntimeError("encode_images returned actions outside int32")
        self.writer.add(
            [row.key for row in self.batch],
            [row.caption for row in self.batch],
            actions.to(torch.int32).numpy(),
            [row.height for row in self.batch],
            [row.width for row in self.batch],
        )
        self.encoded += len(self.batch)
        self.batch = []

    def finish_shard(self, end: int) -> None:
        if self.writer is None:
            return
        self.flush()
        self.writer.close(end)
        self.writer = None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


@dataclass
class _Setup:
    """What an encode run needs once its inputs are checked: nothing here has written to `output_dir` yet."""

    state: object  # accelerate.PartialState
    source: ImageSource
    policy: object  # the family's Policy
    image_size: tuple[int, int]
    plan: dict
    finished: dict[int, dict]  # finished shards found in output_dir, by index


def _set_up(config: EncodeConfig) -> _Setup:
    """Check the inputs, load the policy, read what `output_dir` already holds (raises before writing)."""
    from accelerate import PartialState
    from transformers import set_seed

    from ..families import load_policy

    if not config.model_name_or_path:
        raise ValueError("model_name_or_path: set the checkpoint whose visual tokenizer encodes the images")
    if not config.output_dir:
        raise ValueError("output_dir: set where the shards go")
    source = open_source(
        config.dataset,
        image_column=config.image_column,
        caption_column=config.caption_column,
        key_column=config.key_column,
        dataset_config=config.dataset_config,
        dataset_split=config.dataset_split,
    )
    state = PartialState(cpu=config.use_cpu)
    set_seed(config.seed)
    policy = load_policy(
        config.model_name_or_path,
        config.model_family,
        visual_tokenizer=config.visual_tokenizer,
        dtype=config.dtype,
        family_config=config.family_config,
    )
    policy.to(state.device)  # the frozen visual tokenizer; the LM stays where it was loaded
    image_size = tuple(int(x) for x in policy.image_size)
    plan = _plan(config, _family(config), source, image_size, int(policy.num_actions))
    finished = finished_shards(config.output_dir, plan)  # a folder encoded under another plan stops here,
    check_finished_keys(source, finished, config.shard_size, config.output_dir)  # and one whose input changed
    return _Setup(state, source, policy, image_size, plan, finished)


def _encode_owned_shards(config: EncodeConfig, setup: _Setup) -> tuple[int, int, float]:
    """Encode this process's unfinished shards; (rows in the input, rows encoded here, seconds)."""
    from tqdm.auto import tqdm

    state = setup.state
    rank, world = state.process_index, state.num_processes

    def owns(shard: int) -> bool:  # shard n belongs to process n % world, unless an earlier run finished it
        return shard % world == rank and shard not in setup.finished

    scan = _Scan(setup.source, config.max_examples, config.shard_size, owns)
    known_rows = setup.source.num_rows  # the progress bar's total, when the source knows its length up front
    if known_rows is not None and config.max_examples is not None:
        known_rows = min(known_rows, config.max_examples)
    encoder = _Encoder(setup.policy, config, setup.plan, state.device, rank)
    bar = tqdm(
        total=_owned_rows(known_rows, config.shard_size, owns),
        desc="encode",
        unit="img",
        disable=not state.is_main_process,
        dynamic_ncols=True,
    )
    start = time.perf_counter()
    prepared = ordered_map(
        lambda item: (item[0], prepare_row(item[1], setup.image_size)),
        scan,
        config.num_workers,
        config.prefetch_batches * config.batch_size,
    )
    try:
        for shard, row in prepared:
            encoder.add(shard, row)
            bar.update(1)
        if encoder.writer is not None:
            encoder.finish_shard(min((encoder.writer.index + 1) * config.shard_size, scan.num_rows))
    except BaseException:
        encoder.abort()  # the shard in progress is dropped; finished ones stay for the rerun
        raise
    finally:
        bar.close()
    return scan.num_rows or 0, encoder.encoded, time.perf_counter() - start


def run_encode(config: EncodeConfig) -> dict:
    """Encode `config.dataset` into `config.output_dir`: this process's shards, then (main process, after a
    barrier) `encode.json`. Returns a summary: `num_rows`, `num_shards`, `reused_shards`, `encoded_this_run`,
    `seconds`, `images_per_second` (this run, all processes), and on the main process the folder's
    `num_encoded`, `num_skipped` and `skipped` list. Raises `SourceError`, `ShardPlanError`, `CheckpointError`,
    `OSError` or `ValueError` on bad input, before anything is written."""
    setup = _set_up(config)
    state, output_dir = setup.state, config.output_dir
    os.makedirs(os.path.join(output_dir, SHARDS_FOLDER), exist_ok=True)
    if state.is_main_process and os.path.exists(os.path.join(output_dir, INFO_FILE)):
        os.remove(os.path.join(output_dir, INFO_FILE))  # shards are being redone: incomplete until the end
    num_rows, encoded, seconds = _encode_owned_shards(config, setup)
    if num_rows == 0:  # every process walked the same stream: all stop here together
        raise SourceError(f"{config.dataset}: no rows")
    if state.num_processes > 1:  # this run's work over all processes (their shards are disjoint)
        from accelerate.utils import gather_object

        work = gather_object([(encoded, seconds)])
        encoded, seconds = sum(count for count, _ in work), max(took for _, took in work)
    state.wait_for_everyone()
    num_shards = -(-num_rows // config.shard_size)
    summary = {
        "output_dir": output_dir,
        "num_rows": num_rows,
        "num_shards": num_shards,
        "reused_shards": len(setup.finished),
        "encoded_this_run": encoded,
        "seconds": seconds,
        "images_per_second": encoded / seconds if seconds > 0 else 0.0,
    }
    if state.is_main_process:
        info = collect_info(output_dir, setup.plan, num_shards, num_rows)
        info.write(output_dir)
        summary.update(num_encoded=info.num_encoded, num_skipped=info.num_skipped, skipped=info.skipped)
    state.wait_for_everyone()
    return summary


def summary_line(summary: dict, shown: int = 3) -> str:
    """One line: counts, time, and the first skipped keys with their reasons."""
    line = (
        f"rlhf-img: encoded {summary['num_encoded']} of {summary['num_rows']} pairs into {summary['num_shards']} "
        f"shards in {os.path.join(summary['output_dir'], SHARDS_FOLDER)} ({summary['encoded_this_run']} this run "
        f"in {summary['seconds']:.1f}s, {summary['images_per_second']:.0f} images/s; "
        f"{summary['reused_shards']} finished shards kept)"
    )
    skipped = summary["skipped"]
    if skipped:
        listed = "; ".join(f"{entry['key']} ({entry['reason']})" for entry in skipped[:shown])
        more = f"; +{len(skipped) - shown} more" if len(skipped) > shown else ""
        line += f"; skipped {len(skipped)}: {listed}{more} (all in {os.path.join(summary['output_dir'], INFO_FILE)})"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    """`rlhf-img encode RECIPE.yaml [--key value ...]` (or only `--key value ...`): exit 0, or 2 with one line
    on bad input (a recipe key, a missing dataset or checkpoint, a folder encoded with other settings)."""
    from ..checkpoints import CheckpointError
    from ..command_errors import fail, one_line
    from ..recipes import UsageError, parse_recipe, recipe_parser

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(token in ("-h", "--help") for token in argv):
        print("usage: rlhf-img encode RECIPE.yaml [--key value ...]\n\n" + DESCRIPTION + "\n")
        keys_help = "Recipe keys (each also a --key value flag):"
        recipe_parser((EncodeConfig,), "encode", description=keys_help).print_help()
        return 0
    recipe = None if argv[0].startswith("--") else argv[0]
    try:
        (config,) = parse_recipe(recipe, argv[1:] if recipe else argv, (EncodeConfig,), "encode")
    except UsageError as error:
        fail(str(error))
    try:
        summary = run_encode(config)
    except (SourceError, ShardPlanError, CheckpointError, FileNotFoundError) as error:
        fail(str(error))
    except (OSError, ValueError) as error:
        fail(one_line(str(error).splitlines()[0] if str(error) else type(error).__name__))
    if "skipped" in summary:  # the main process
        print(summary_line(summary))
    return 0


if __name__ == "__main__":  # `torchrun --nproc_per_node N -m rlhf_img.upstream.encode RECIPE ...`
    sys.exit(main())
