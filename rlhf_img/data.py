"""Prompt datasets: a text file, a JSON/CSV/Parquet table with metadata columns, or a `datasets` name/path."""

from __future__ import annotations

import os

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

TABLE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _not_utf8(error: UnicodeDecodeError) -> str:
    return f"not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); save it as UTF-8"


def load_prompt_dataset(
    source: str,
    *,
    config: str | None = None,
    split: str = "train",
    prompt_column: str = "prompt",
    max_prompts: int | None = None,
) -> Dataset:
    """A `datasets.Dataset` with a `prompt` column (strings) and any other columns as metadata."""
    extension = os.path.splitext(source)[1].lower()
    if extension == ".txt" or extension in TABLE_FORMATS:
        if not os.path.isfile(source):
            raise FileNotFoundError(f"prompt file not found: {source}")
    if extension == ".txt":
        try:
            with open(source, encoding="utf-8") as f:
                prompts = [line.strip() for line in f if line.strip()]
        except UnicodeDecodeError as error:
            raise ValueError(f"{source}: {_not_utf8(error)}") from None
        except OSError as error:
            raise ValueError(f"{source}: cannot read ({error.strerror or error})") from None
        dataset = Dataset.from_dict({"prompt": prompts})
    elif extension in TABLE_FORMATS:
        try:
            dataset = load_dataset(TABLE_FORMATS[extension], data_files=source, split="train")
        except Exception as error:  # noqa: BLE001 - datasets wraps the parser's error; one line naming the file
            cause = error.__cause__ or error.__context__ or error
            if isinstance(cause, UnicodeDecodeError) or isinstance(error, UnicodeDecodeError):
                detail = _not_utf8(cause if isinstance(cause, UnicodeDecodeError) else error)
            else:
                detail = f"{type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}"
            raise ValueError(f"{source}: cannot read it as {TABLE_FORMATS[extension]} ({detail})") from None
    elif os.path.isdir(source) and (
        os.path.exists(os.path.join(source, "state.json")) or os.path.exists(os.path.join(source, "dataset_dict.json"))
    ):  # a `save_to_disk` folder
        dataset = load_from_disk(source)
        if isinstance(dataset, DatasetDict):
            if split not in dataset:
                raise ValueError(f"{source}: no split {split!r} (splits: {list(dataset)}); set dataset_split")
            dataset = dataset[split]
    else:
        if source.startswith((".", "/", "~")) and not os.path.exists(source):
            raise FileNotFoundError(f"prompt dataset not found: {source}")
        dataset = load_dataset(source, config, split=split)
    if prompt_column not in dataset.column_names:
        raise ValueError(f"{source}: no column {prompt_column!r} (columns: {dataset.column_names}); set prompt_column")
    if prompt_column != "prompt":
        if "prompt" in dataset.column_names:
            dataset = dataset.remove_columns("prompt")
        dataset = dataset.rename_column(prompt_column, "prompt")
    if len(dataset) == 0:
        raise ValueError(f"{source}: no prompts")
    if max_prompts is not None:
        dataset = dataset.select(range(min(max_prompts, len(dataset))))
    prompt_type = getattr(dataset.features.get("prompt"), "dtype", None)
    if prompt_type not in ("string", "large_string"):
        raise ValueError(f"{source}: column {prompt_column!r} must hold text, got {dataset.features['prompt']}")
    if extension in TABLE_FORMATS:
        try:  # pyarrow reads JSON strings without checking UTF-8; decoding them here catches that before training
            dataset[:]
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{source}: holds text that is not UTF-8 (byte 0x{error.object[error.start]:02x}); save it as UTF-8"
            ) from None
    return dataset
