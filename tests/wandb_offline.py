"""Read the history of an offline wandb run (`run-*.wandb`): a LevelDB-style log of protobuf records.

wandb >= 0.19 no longer ships a Python reader, so the tests carry this small one: a 7-byte file header
(':W&B', magic, version), then 32 KiB blocks of chunks (crc32c:4, length:2 little-endian, type:1, data),
where type 1 = a whole record and 2/3/4 = first/middle/last piece of one.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import time
from typing import Callable

BLOCK = 32768
HEADER = 7


def read_records(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    records, pending, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        block_left = BLOCK - offset % BLOCK
        if block_left < HEADER:  # block trailer padding
            offset += block_left
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        chunk = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
            pending = b""
    return records


def history_keys(run_dir: str, until: Callable[[dict], bool] | None = None, timeout: float = 60.0) -> dict[str, list]:
    """{history key: [values]} of the single offline run under `run_dir` (a WANDB_DIR).

    wandb's service process writes the run file on its own schedule and may still be flushing after
    `wandb.finish()` returns on a loaded machine: with `until`, re-read until it holds (or `timeout` passes).
    """
    deadline = time.monotonic() + timeout
    while True:
        history = _read_history(run_dir)
        if until is None or until(history) or time.monotonic() > deadline:
            return history
        time.sleep(0.5)


def _read_history(run_dir: str) -> dict[str, list]:
    from wandb.proto import wandb_internal_pb2 as pb

    (run_file,) = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    history: dict[str, list] = {}
    for raw in read_records(run_file):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") != "history":
            continue
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            history.setdefault(key, []).append(json.loads(item.value_json))
    return history
