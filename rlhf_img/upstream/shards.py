"""The on-disk layout `rlhf-img encode` writes and the SFT / DPO stages read.

    output_dir/
      encode.json                  what was encoded, with what, and every skipped key (`EncodedInfo`)
      shards/shard-00000.arrow     input rows [0, shard_size): key, caption, actions, height, width
      shards/shard-00000.json      that shard's sidecar: its row range, counts, skipped keys and reasons

Shards are Arrow IPC stream files written by `datasets`' `ArrowWriter` (the format `Dataset.from_file` memory-maps,
with the features in the schema), so reading them copies nothing to the HF cache and loads nothing to RAM.

Crash safety: a shard's sidecar is written first, then its Arrow file under a temporary name, renamed when
complete; the Arrow file's presence (next to a sidecar of the same plan and the same row count) is the only
"finished" mark. A kill at any point leaves either a finished shard or a shard that the rerun redoes.
`encode.json` is written last, by the main process, when every shard is finished: its presence means the whole
folder is complete, and `open_encoded` refuses a folder without it.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

SHARDS_FOLDER = "shards"
INFO_FILE = "encode.json"
TEMPORARY_SUFFIX = ".tmp"


class ShardPlanError(ValueError):
    """`output_dir` holds shards encoded under another plan (source, checkpoint, shard_size, ...)."""


def shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


def shard_paths(output_dir: str, index: int) -> tuple[str, str]:
    """(Arrow file, sidecar) of shard `index`."""
    stem = os.path.join(output_dir, SHARDS_FOLDER, shard_stem(index))
    return stem + ".arrow", stem + ".json"


class KeysDigest:
    """A digest of a shard's input keys in row order: a rerun compares it with the rows the input has now at the
    same positions, so a finished shard is never reused for rows that moved (images added to a folder)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, key: str) -> None:
        self._hash.update(key.encode("utf-8", "surrogateescape") + b"\0")

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def shard_features(num_actions: int):
    """The shard columns: `actions` is a fixed-length list of `num_actions` int32 (T per row, for every row)."""
    from datasets import Features, List, Value

    return Features(
        {
            "key": Value("string"),
            "caption": Value("string"),
            "actions": List(Value("int32"), length=num_actions),
            "height": Value("int32"),
            "width": Value("int32"),
        }
    )


def _write_json(path: str, data: dict) -> None:
    """Write `data` to a temporary name and rename it: readers see the old file or the new one, never half."""
    temporary = f"{path}{TEMPORARY_SUFFIX}-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(temporary, path)


class ShardWriter:
    """Writes one shard: every row's key goes to `keys` in input order, then `add` batches of encoded rows and
    `skip` bad ones; `close` (sidecar, then the Arrow file renamed into place) or `abort` (temporary file removed)."""

    def __init__(
        self, output_dir: str, index: int, start: int, plan: dict, num_actions: int, process_index: int = 0
    ) -> None:
        from datasets.arrow_writer import ArrowWriter

        self.index, self.start, self.plan, self.num_actions = index, start, plan, num_actions
        self.process_index = process_index
        self.arrow_path, self.sidecar_path = shard_paths(output_dir, index)
        stale_files = glob.glob(self.arrow_path + TEMPORARY_SUFFIX + "*") + glob.glob(
            self.sidecar_path + TEMPORARY_SUFFIX + "*"
        )
        for stale in stale_files:
            os.remove(stale)  # half-written by a killed run (one process owns a shard, so none is in use)
        self.temporary_path = f"{self.arrow_path}{TEMPORARY_SUFFIX}-{os.getpid()}"
        self.features = shard_features(num_actions)
        self.writer = ArrowWriter(features=self.features, path=self.temporary_path)
        self.encoded, self.skipped, self.keys = 0, [], KeysDigest()

    def add(
        self, keys: list[str], captions: list[str], actions: np.ndarray, heights: list[int], widths: list[int]
    ) -> None:
        """Append encoded rows; `actions` `(B, T)` int32."""
        if actions.shape != (len(keys), self.num_actions):
            raise ValueError(
                f"shard {self.index}: actions of shape {actions.shape}, expected ({len(keys)}, {self.num_actions})"
            )
        flat = pa.array(np.ascontiguousarray(actions, dtype=np.int32).reshape(-1), type=pa.int32())
        table = pa.Table.from_arrays(
            [
                pa.array(keys, pa.string()),
                pa.array(captions, pa.string()),
                pa.FixedSizeListArray.from_arrays(flat, self.num_actions),
                pa.array(heights, pa.int32()),
                pa.array(widths, pa.int32()),
            ],
            schema=self.features.arrow_schema,
        )
        self.writer.write_table(table)
        self.encoded += len(keys)

    def skip(self, key: str, reason: str) -> None:
        self.skipped.append({"key": key, "reason": reason})

    def close(self, end: int) -> dict:
        """Finish the shard for input rows [start, end); returns its sidecar record."""
        if self.encoded + len(self.skipped) != end - self.start:
            raise RuntimeError(
                f"shard {self.index}: {self.encoded} encoded + {len(self.skipped)} skipped rows, "
                f"expected {end - self.start} (rows [{self.start}, {end}))"
            )
        self.writer.finalize()
        self.writer.close()
        record = {
            "shard": self.index,
            "rows": [self.start, end],
            "encoded": self.encoded,
            "skipped": self.skipped,
            "keys_sha256": self.keys.hexdigest(),
            "process": self.process_index,
            "plan": self.plan,
        }
        _write_json(self.sidecar_path, record)
        os.replace(self.temporary_path, self.arrow_path)  # the shard counts from here on
        return record

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            if os.path.exists(self.temporary_path):
                os.remove(self.temporary_path)


def _arrow_rows(path: str) -> int | None:
    """Rows in an Arrow stream file, read by memory map (batch headers only); None if it is not readable."""
    try:
        with pa.memory_map(path) as source:
            reader = pa.ipc.open_stream(source)
            return sum(batch.num_rows for batch in reader)
    except (OSError, pa.ArrowInvalid):
        return None


def read_sidecar(output_dir: str, index: int) -> dict | None:
    """Shard `index`'s sidecar if the shard is finished (Arrow file present with the recorded rows), else None."""
    arrow_path, sidecar_path = shard_paths(output_dir, index)
    if not (os.path.exists(arrow_path) and os.path.exists(sidecar_path)):
        return None
    try:
        with open(sidecar_path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return record if _arrow_rows(arrow_path) == record.get("encoded") else None


def finished_shards(output_dir: str, plan: dict) -> dict[int, dict]:
    """`{index: sidecar}` of the finished shards in `output_dir`; `ShardPlanError` if one was encoded under a
    different plan (its rows would not be this run's rows)."""
    finished = {}
    for arrow_path in sorted(glob.glob(os.path.join(output_dir, SHARDS_FOLDER, "shard-*.arrow"))):
        stem = os.path.basename(arrow_path)[len("shard-") : -len(".arrow")]
        if not stem.isdigit():
            continue
        record = read_sidecar(output_dir, int(stem))
        if record is None:
            continue
        if record.get("plan") != plan:
            differing = sorted(
                k for k in set(plan) | set(record.get("plan") or {}) if plan.get(k) != (record.get("plan") or {}).get(k)
            )
            raise ShardPlanError(
                f"{output_dir} holds shards encoded with other settings ({', '.join(differing)} differ, e.g. "
                f"{differing[0]}={(record.get('plan') or {}).get(differing[0])!r} there, {plan.get(differing[0])!r} "
                "now); use another output_dir or delete it"
            )
        finished[int(stem)] = record
    return finished


@dataclass
class EncodedInfo:
    """`encode.json`: what a folder of encoded shards holds and how it was made. The SFT / DPO stages check
    `family`, `image_size` and `num_actions` against the policy they train before reading the actions."""

    family: str
    checkpoint: str
    visual_tokenizer: str | None
    family_config: dict | None
    dtype: str | None
    image_size: list[int]  # [H, W] the images were fitted to
    num_actions: int  # T: actions per row
    source: str  # the `dataset` input as given
    source_kind: str  # folder, table, datasets, webdataset
    image_column: str
    caption_column: str
    key_column: str | None
    shard_size: int  # input rows per shard
    max_examples: int | None
    num_rows: int  # input rows read (encoded + skipped)
    num_encoded: int
    num_skipped: int
    shards: list[dict] = field(default_factory=list)  # [{"file", "rows": [start, end), "encoded"}]
    skipped: list[dict] = field(default_factory=list)  # [{"key", "reason", "shard"}]

    @classmethod
    def read(cls, folder: str) -> "EncodedInfo":
        path = os.path.join(folder, INFO_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{folder}: no {INFO_FILE}; not an `rlhf-img encode` output, or the encode did "
                "not finish (rerun it: finished shards are kept)"
            )
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})

    def write(self, folder: str) -> None:
        _write_json(os.path.join(folder, INFO_FILE), dataclasses.asdict(self))


def collect_info(output_dir: str, plan: dict, num_shards: int, num_rows: int) -> EncodedInfo:
    """The `EncodedInfo` of a finished encode, from its shards' sidecars (RuntimeError naming a missing shard)."""
    shards, skipped, encoded = [], [], 0
    for index in range(num_shards):
        record = read_sidecar(output_dir, index)
        if record is None or record.get("plan") != plan:
            raise RuntimeError(
                f"shard {index} of {num_shards} is not finished in {output_dir}; rerun the encode "
                "(finished shards are kept)"
            )
        shards.append(
            {"file": f"{SHARDS_FOLDER}/{shard_stem(index)}.arrow", "rows": record["rows"], "encoded": record["encoded"]}
        )
        skipped += [{**entry, "shard": index} for entry in record["skipped"]]
        encoded += record["encoded"]
    info_fields: dict[str, Any] = {
        key: plan[key]
        for key in (
            "family",
            "checkpoint",
            "visual_tokenizer",
            "family_config",
            "dtype",
            "image_size",
            "num_actions",
            "source",
            "source_kind",
            "image_column",
            "caption_column",
            "key_column",
            "shard_size",
            "max_examples",
        )
    }
    return EncodedInfo(
        **info_fields, num_rows=num_rows, num_encoded=encoded, num_skipped=len(skipped), shards=shards, skipped=skipped
    )


def open_encoded(folder: str):
    """The encoded pairs of an `rlhf-img encode` output folder as one `datasets.Dataset`, memory-mapped.

    Columns: `key` (string), `caption` (string), `actions` (T int32: what `policy.encode_images` returned for the
    fitted image; the SFT / DPO stages teacher-force them), `height`, `width` (the source image's size). Rows come
    in input order, bad rows left out (`EncodedInfo.read(folder).skipped` lists them).

    Every shard is opened with `Dataset.from_file` and joined with `concatenate_datasets`: the tables are memory
    maps of `folder/shards/*.arrow` (`dataset.cache_files` points there), nothing is copied to the HF cache or read
    into RAM, and worker processes of a DataLoader share the pages. Raises `FileNotFoundError` when `encode.json`
    is missing (the encode never finished: rerun it).
    """
    from datasets import Dataset, concatenate_datasets

    info = EncodedInfo.read(folder)
    parts = [Dataset.from_file(os.path.join(folder, shard["file"]), in_memory=False) for shard in info.shards]
    non_empty = [part for part in parts if len(part)] or parts[:1]  # a shard of only bad rows adds nothing
    if not non_empty:
        return Dataset.from_dict(
            {name: [] for name in shard_features(info.num_actions)}, features=shard_features(info.num_actions)
        )
    return non_empty[0] if len(non_empty) == 1 else concatenate_datasets(non_empty)
