"""The image/caption inputs of `rlhf-img encode`, each read as one deterministic stream of rows.

A row is a key plus a `load()` that returns `(caption, opened image)`: scanning a source touches keys and file
offsets only, so a process can walk the whole stream cheaply and open just the rows it encodes (its own shards,
the ones not finished by an earlier run). Nothing holds more than one folder's image names, one table batch or one
tar file's member index at a time (plus, for a folder with metadata files, their captions as text); no image is
read before its row is loaded.

Inputs (`open_source`):
- a folder of images (searched recursively, sorted): the caption is the same-stem `.txt`, else the
  `caption_column` of a `metadata.jsonl` / `metadata.csv` row whose `file_name` names the image (as
  `datasets`' imagefolder reads it); key: the path without extension, relative to the folder;
- a `.jsonl` / `.json` / `.csv` / `.parquet` table: `image_column` holds a path (relative to the table's folder),
  image bytes, or `datasets`' `{"bytes", "path"}`; key: `key_column`, else the path, else the row number;
- a `datasets` `save_to_disk` folder or a hub name (`dataset_config`, `dataset_split`): an `Image` feature (read
  undecoded and decoded per row) or paths (relative to the folder); key: `key_column`, else the path, else the
  row number;
- webdataset shards: a `.tar` file, a glob of them (`data/*.tar`) or a folder of them (and no images); a sample is the
  members sharing a key (`KEY.jpg|jpeg|png|webp` and `KEY.txt`, or `KEY.json` with a `caption_column` entry).

Bad rows (a missing file, a corrupt image, no caption) raise from `load()`; `image_rows.prepare_row` turns that
into a skipped row with a one-line reason. A source that cannot be read at all raises `SourceError` up front.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import tarfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from PIL import Image

from .image_rows import BadRow, SourceRow, caption_text, one_line, open_image_bytes, open_image_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TABLE_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
PARQUET_BATCH_ROWS = 256  # rows read from a parquet file at a time (with their image bytes, if embedded)


class SourceError(ValueError):
    """The input as a whole cannot be read (not found, unknown layout, a missing column): one line naming it."""


@dataclass(frozen=True)
class ImageSource:
    """A deterministic stream of `SourceRow`s: the same rows in the same order on every call and every process."""

    kind: str  # "folder", "table", "datasets", "webdataset"
    location: str
    num_rows: int | None  # known without a scan (folder listing, parquet metadata, datasets); else None
    _rows: Callable[[], Iterator[SourceRow]]

    def __iter__(self) -> Iterator[SourceRow]:
        return self._rows()


# ------------------------------------------------------------------------------------------------------ folder


def _walk_images(root: str) -> Iterator[tuple[str, dict[str, str]]]:
    """(path of each image under `root`, `{stem: name}` of the `.txt` files beside it), sorted per folder, folders
    depth-first; hidden files and folders (`.DS_Store`, `._x.jpg`) left out, as `datasets`' imagefolder does. One
    folder's image names and caption names in memory at a time (a flat folder of N pairs: about N x 250 bytes),
    never its directory entries."""
    image_names, folder_names, text_files = [], [], {}
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            stem, extension = os.path.splitext(entry.name)
            extension = extension.lower()
            if extension == ".txt":
                text_files[stem] = entry.name
            elif extension in IMAGE_EXTENSIONS and entry.is_file():
                image_names.append(entry.name)
            elif entry.is_dir():
                folder_names.append(entry.name)
    image_names.sort()
    folder_names.sort()
    for name in image_names:
        yield os.path.join(root, name), text_files
    for name in folder_names:
        yield from _walk_images(os.path.join(root, name))


def _metadata_captions(root: str, caption_column: str) -> dict[str, str]:
    """`{image path relative to root: caption}` from every `metadata.jsonl` / `metadata.csv` under `root` (their
    `file_name` relative to their own folder, as `datasets`' imagefolder reads them). Captions only: text."""
    captions: dict[str, str] = {}
    for folder, _, files in os.walk(root):
        for name in METADATA_FILES:
            if name not in files:
                continue
            path = os.path.join(folder, name)
            for _, record in _table_records(path):
                if isinstance(record, dict) and "file_name" in record and record.get(caption_column) is not None:
                    relative = os.path.relpath(os.path.join(folder, str(record["file_name"])), root)
                    captions[relative.replace(os.sep, "/")] = str(record[caption_column])
    return captions


def folder_source(root: str, caption_column: str) -> ImageSource:
    """A folder of images with same-stem `.txt` captions or metadata files."""
    captions = _metadata_captions(root, caption_column)
    num_rows = sum(1 for _ in _walk_images(root))
    if num_rows == 0:
        raise SourceError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder or below")

    def rows() -> Iterator[SourceRow]:
        for path, text_files in _walk_images(root):
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            text_name = text_files.get(os.path.splitext(os.path.basename(path))[0])
            text_file = os.path.join(os.path.dirname(path), text_name) if text_name else None
            yield SourceRow(os.path.splitext(relative)[0], _folder_loader(path, text_file, captions.get(relative)))

    return ImageSource("folder", root, num_rows, rows)


def _folder_loader(path: str, text_file: str | None, caption: str | None) -> Callable[[], tuple[str, Image.Image]]:
    def load() -> tuple[str, Image.Image]:
        if text_file is not None:
            with open(text_file, encoding="utf-8") as f:
                text = f.read().strip()
        elif caption is not None:
            text = caption
        else:
            raise BadRow(f"no caption (no {os.path.splitext(os.path.basename(path))[0]}.txt and no metadata row)")
        return text, open_image_file(path)

    return load


# ------------------------------------------------------------------------------------------------------- tables


def _table_records(path: str) -> Iterator[tuple[int, Any]]:
    """(row number, record) of a .jsonl/.json/.csv/.parquet file, streamed; an unparsable jsonl line is yielded
    as a `BadRow` record so that one bad line is one skipped row."""
    extension = os.path.splitext(path)[1].lower()
    if extension == ".parquet":
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for record in batch.to_pylist():
                yield number, record
                number += 1
    elif extension == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            yield from enumerate(csv.DictReader(f))
    elif extension == ".json" and _is_json_array(path):
        with open(path, encoding="utf-8") as f:
            yield from enumerate(json.load(f))
    else:  # .jsonl, or .json holding one object per line
        with open(path, encoding="utf-8") as f:
            number = 0
            for line in f:
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    yield number, BadRow(f"line {number + 1}: invalid JSON ({error.msg})")
                number += 1


def _is_json_array(path: str) -> bool:
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    return head.startswith("[")


def _image_loader(value: Any, base_dir: str | None) -> Callable[[], Image.Image]:
    """How to open an image cell: a path (relative to `base_dir`), bytes, or `{"bytes", "path"}`."""
    if isinstance(value, dict):
        if value.get("bytes"):
            data = value["bytes"]
            return lambda: open_image_bytes(data)
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
        return lambda: open_image_bytes(data)
    if isinstance(value, str) and value:
        path = value if os.path.isabs(value) or base_dir is None else os.path.join(base_dir, value)

        return lambda: open_image_file(path)

    def missing() -> Image.Image:
        raise BadRow(f"no image (image cell is {value!r})")

    return missing


def _cell_key(record: dict, number: int, image_column: str, key_column: str | None) -> str:
    if key_column is not None and record.get(key_column) is not None:
        return str(record[key_column])
    value = record.get(image_column)
    path = value.get("path") if isinstance(value, dict) else value
    return path if isinstance(path, str) and path else str(number)


def _record_row(
    record: Any, number: int, image_column: str, caption_column: str, key_column: str | None, base_dir: str | None
) -> SourceRow:
    if isinstance(record, BadRow):
        error = record

        def bad() -> tuple[str, Image.Image]:
            raise error

        return SourceRow(str(number), bad)
    if not isinstance(record, dict):
        return SourceRow(str(number), _raiser(BadRow(f"row {number} is not an object: {type(record).__name__}")))
    open_image = _image_loader(record.get(image_column), base_dir)
    caption = record.get(caption_column)

    def load() -> tuple[str, Image.Image]:
        return caption_text(caption, f"column {caption_column!r} is empty"), open_image()

    return SourceRow(_cell_key(record, number, image_column, key_column), load)


def _raiser(error: Exception) -> Callable[[], tuple[str, Image.Image]]:
    def load() -> tuple[str, Image.Image]:
        raise error

    return load


def _table_columns(path: str) -> list[str] | None:
    """The column names a table declares up front (csv header, parquet schema); None for JSON."""
    extension = os.path.splitext(path)[1].lower()
    if extension == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    if extension == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            return next(csv.reader(f), [])
    return None


def table_source(path: str, image_column: str, caption_column: str, key_column: str | None) -> ImageSource:
    """A .jsonl/.json/.csv/.parquet table of image paths (relative to the file) or bytes, and captions."""
    try:
        columns = _table_columns(path)
        if columns is None:  # JSON: the first record names the columns
            first = next((record for _, record in _table_records(path) if isinstance(record, dict)), None)
            columns = list(first) if first is not None else []
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise SourceError(f"{path}: cannot read it ({type(error).__name__}: {one_line(error)})") from None
    for role, column in (("image_column", image_column), ("caption_column", caption_column)):
        if column not in columns:
            raise SourceError(f"{path}: no column {column!r} (columns: {columns}); set {role}")
    if key_column is not None and key_column not in columns:
        raise SourceError(f"{path}: no column {key_column!r} (columns: {columns}); set key_column or leave it unset")
    num_rows = None
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        num_rows = pq.ParquetFile(path).metadata.num_rows
    base_dir = os.path.dirname(os.path.abspath(path))

    def rows() -> Iterator[SourceRow]:
        for number, record in _table_records(path):
            yield _record_row(record, number, image_column, caption_column, key_column, base_dir)

    return ImageSource("table", path, num_rows, rows)


# ----------------------------------------------------------------------------------------------------- datasets


def _is_saved_dataset(path: str) -> bool:
    """A `save_to_disk` folder (a Dataset's state.json or a DatasetDict's dataset_dict.json)."""
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, name)) for name in ("state.json", "dataset_dict.json")
    )


def datasets_source(
    name: str, image_column: str, caption_column: str, key_column: str | None, config: str | None, split: str
) -> ImageSource:
    """A `save_to_disk` folder or a hub dataset. The scan reads the key and caption columns only; each row's
    image cell is read (undecoded, from the memory-mapped table) when the row is loaded."""
    from datasets import DatasetDict, load_dataset, load_from_disk
    from datasets import Image as ImageFeature

    is_saved = _is_saved_dataset(name)
    try:
        dataset = load_from_disk(name) if is_saved else load_dataset(name, config, split=split)
    except Exception as error:  # noqa: BLE001 - datasets raises many types; one line naming the source
        raise SourceError(
            f"{name}: cannot load it as a dataset ({type(error).__name__}: "
            f"{one_line(str(error).splitlines()[0] if str(error) else '')})"
        ) from None
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise SourceError(f"{name}: no split {split!r} (splits: {list(dataset)}); set dataset_split")
        dataset = dataset[split]
    for role, column in (("image_column", image_column), ("caption_column", caption_column)):
        if column not in dataset.column_names:
            raise SourceError(f"{name}: no column {column!r} (columns: {dataset.column_names}); set {role}")
    if key_column is not None and key_column not in dataset.column_names:
        raise SourceError(f"{name}: no column {key_column!r} (columns: {dataset.column_names}); set key_column")
    embedded = isinstance(dataset.features[image_column], ImageFeature)
    if embedded:  # cells come back as {"bytes", "path"}; decoding is ours, per row, in the loader threads
        dataset = dataset.cast_column(image_column, ImageFeature(decode=False))
    scan_columns = [caption_column] + ([key_column] if key_column else []) + ([] if embedded else [image_column])
    scan = dataset.select_columns(list(dict.fromkeys(scan_columns)))
    images = dataset.select_columns([image_column])
    base_dir = name if is_saved else None

    def rows() -> Iterator[SourceRow]:
        for number, record in enumerate(scan):
            if embedded:
                key = str(record[key_column]) if key_column and record[key_column] is not None else str(number)
                caption = record[caption_column]
                yield SourceRow(key, _dataset_loader(images, number, image_column, caption, caption_column))
            else:
                yield _record_row(record, number, image_column, caption_column, key_column, base_dir)

    return ImageSource("datasets", name, len(dataset), rows)


def _dataset_loader(
    images, number: int, image_column: str, caption: Any, caption_column: str
) -> Callable[[], tuple[str, Image.Image]]:
    def load() -> tuple[str, Image.Image]:
        text = caption_text(caption, f"column {caption_column!r} is empty")
        return text, _image_loader(images[number][image_column], None)()

    return load


# --------------------------------------------------------------------------------------------------- webdataset


def tar_files(location: str) -> list[str]:
    """The `.tar` files of a webdataset input (a file, a glob or a folder), sorted; [] if it is none of those."""
    if any(char in location for char in "*?["):
        return sorted(path for path in glob.glob(location) if os.path.isfile(path))
    if os.path.isfile(location) and location.lower().endswith(".tar"):
        return [location]
    if os.path.isdir(location):
        names = sorted(os.listdir(location))
        tars = [os.path.join(location, name) for name in names if name.lower().endswith(".tar")]
        has_images = any(os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS for name in names)
        return tars if tars and not has_images else []
    return []


def _sample_key(member_name: str) -> tuple[str, str]:
    """webdataset's (`__key__`, extension): the member path up to the first dot of its file name."""
    folder, base = os.path.split(member_name)
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def _read_member(path: str, member: tarfile.TarInfo) -> bytes:
    with open(path, "rb") as f:
        f.seek(member.offset_data)
        return f.read(member.size)


def _tar_rows(path: str, caption_column: str) -> Iterator[SourceRow]:
    """One tar file's samples in member order. The scan reads headers only (tarfile seeks past the data of an
    uncompressed tar); a sample's members are read by offset when it is loaded."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if member.isfile():
                key, extension = _sample_key(member.name)
                samples.setdefault(key, {})[extension] = member
    for key, members in samples.items():
        yield SourceRow(key, _tar_loader(path, members, caption_column))


def _tar_loader(path: str, members: dict[str, tarfile.TarInfo], caption_column: str):
    def load() -> tuple[str, Image.Image]:
        image_member = next((members[ext] for ext in TAR_IMAGE_EXTENSIONS if ext in members), None)
        if "txt" in members:
            caption = _read_member(path, members["txt"]).decode("utf-8").strip()
        elif "json" in members:
            record = json.loads(_read_member(path, members["json"]))
            caption = caption_text(
                record.get(caption_column) if isinstance(record, dict) else None, f"no {caption_column!r} in its .json"
            )
        else:
            raise BadRow("no caption member (.txt or .json)")
        if image_member is None:
            raise BadRow(f"no image member ({', '.join('.' + ext for ext in TAR_IMAGE_EXTENSIONS)})")
        return caption, open_image_bytes(_read_member(path, image_member))

    return load


def webdataset_source(location: str, caption_column: str) -> ImageSource:
    """webdataset shards: `.tar` files of `KEY.jpg|png|webp` + `KEY.txt` / `KEY.json` members."""
    paths = tar_files(location)
    if not paths:
        raise SourceError(f"{location}: no .tar files match")
    for path in paths:
        if not tarfile.is_tarfile(path):
            raise SourceError(f"{path}: not a tar file")
        with open(path, "rb") as f:
            magic = f.read(3)
        if magic[:2] == b"\x1f\x8b" or magic == b"BZh":
            raise SourceError(f"{path}: compressed tar files cannot be read by offset; unpack them to plain .tar")

    def rows() -> Iterator[SourceRow]:
        for path in paths:
            yield from _tar_rows(path, caption_column)

    return ImageSource("webdataset", location, None, rows)


# ------------------------------------------------------------------------------------------------------- choose


def open_source(
    dataset: str,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    key_column: str | None = None,
    dataset_config: str | None = None,
    dataset_split: str = "train",
) -> ImageSource:
    """The input `dataset` names, by its shape: webdataset tars, a table file, a `save_to_disk` folder, a folder
    of images, else a hub dataset name. Raises `SourceError` (one line) when it cannot be read at all."""
    if not dataset:
        raise SourceError("dataset: set the image/caption pairs to encode")
    if tar_files(dataset):
        return webdataset_source(dataset, caption_column)
    if dataset.lower().endswith(TABLE_EXTENSIONS):
        if not os.path.isfile(dataset):
            raise SourceError(f"dataset file not found: {dataset}")
        return table_source(dataset, image_column, caption_column, key_column)
    if os.path.isdir(dataset):
        if _is_saved_dataset(dataset):
            return datasets_source(dataset, image_column, caption_column, key_column, dataset_config, dataset_split)
        return folder_source(dataset, caption_column)
    looks_local = dataset.startswith((".", "/", "~")) or dataset.lower().endswith(".tar")
    if looks_local or any(char in dataset for char in "*?["):
        raise SourceError(f"dataset not found: {dataset}")
    return datasets_source(dataset, image_column, caption_column, key_column, dataset_config, dataset_split)
