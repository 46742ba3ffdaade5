"""Where DPO's preference pairs come from: a table of (prompt, chosen, rejected) rows, or groups of images sampled
from a policy and ranked by rewards (online DPO, and `rlhf-img dpo pairs`, which writes such groups as a table).

A table's chosen / rejected values are images (paths relative to the table's folder, or a `datasets` Image
column) or already-encoded actions (lists of ints of length `num_actions`, e.g. what `rlhf-img dpo pairs` writes
next to the images). Images are read, resized and centre-cropped one row at a time, so memory does not grow with
the table; the trainer encodes them per batch with `Policy.encode_images`.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, NamedTuple

import torch
from datasets import Dataset
from PIL import Image

from ..advantages import group_advantages
from ..data import load_prompt_dataset
from ..images import to_pil
from ..policy import Policy, Sampling
from ..rewards.reward_set import RewardSet
from ..sampling.generators import SampleGenerators
from .image_rows import fit_image

PAIR_KINDS = ("images", "actions")


# ------------------------------------------------------------------------------------------------ tables
def load_image(value: Any, base_dir: str, size: tuple[int, int]) -> torch.Tensor:
    """`(3, H, W)` float in [0, 1] at `size = (H, W)`, prepared as `rlhf-img encode` prepares its images
    (`image_rows.fit_image`: upright, RGB, scaled to cover, centre-cropped), so a DPO pair and an SFT pair of the
    same picture encode to the same actions. `value`: a path (relative paths from `base_dir`), a PIL image, or a
    `datasets` Image cell (`{"bytes": ..., "path": ...}`)."""
    if isinstance(value, dict):  # an undecoded datasets Image cell
        value = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else value.get("path")
    if not isinstance(value, Image.Image):
        path = str(value) if os.path.isabs(str(value)) else os.path.join(base_dir, str(value))
        try:
            value = Image.open(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read image {path} ({type(error).__name__}: {error})") from None
    return torch.from_numpy(fit_image(value, size)).permute(2, 0, 1).float() / 255


def load_pair_table(
    source: str,
    *,
    prompt_column: str = "prompt",
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
    config: str | None = None,
    split: str = "train",
    max_rows: int | None = None,
) -> tuple[Dataset, str]:
    """The pair rows (a `datasets.Dataset`, memory-mapped) with the prompt column renamed `prompt`, and the folder
    relative image paths start from (the table file's folder, the `save_to_disk` folder, else the current one).
    Raises `ValueError` / `FileNotFoundError` with one line naming the file and the column."""
    table = load_prompt_dataset(source, config=config, split=split, prompt_column=prompt_column, max_prompts=max_rows)
    for key, column in (("chosen_column", chosen_column), ("rejected_column", rejected_column)):
        if column not in table.column_names:
            raise ValueError(f"{source}: no column {column!r} (columns: {table.column_names}); set {key}")
    if os.path.isfile(source):
        base_dir = os.path.dirname(os.path.abspath(source))
    else:
        base_dir = os.path.abspath(source) if os.path.isdir(source) else os.getcwd()
    return table, base_dir


def pair_kind(table: Dataset, column: str) -> str:
    """'actions' when `column` holds integer sequences, else 'images' (paths or a datasets Image column)."""
    feature = table.features[column]
    inner = getattr(feature, "feature", None)  # datasets' Sequence / List
    if inner is not None and str(getattr(inner, "dtype", "")).startswith(("int", "uint")):
        return "actions"
    return "images"


class PreferencePairs(torch.utils.data.Dataset):
    """Rows of a pair table as `{"prompt": str, "chosen": x, "rejected": x}`: `x` an image `(3, H, W)` in [0, 1]
    at `image_size` (read per item) or actions `(T,)` long, by the columns' kind (`pair_kind`; both columns must
    be of the same kind). `image_size` may be None for an actions table (a family that cannot encode images)."""

    def __init__(
        self,
        table: Dataset,
        image_size: tuple[int, int] | None,
        num_actions: int,
        base_dir: str = ".",
        chosen_column: str = "chosen",
        rejected_column: str = "rejected",
    ) -> None:
        kinds = {pair_kind(table, chosen_column), pair_kind(table, rejected_column)}
        if len(kinds) != 1:
            raise ValueError(
                f"columns {chosen_column!r} and {rejected_column!r} must both hold images or both hold "
                "actions (lists of ints)"
            )
        self.kind = kinds.pop()
        if self.kind == "images" and image_size is None:
            raise ValueError(
                "this family cannot encode images (no encode_images); give pairs as actions "
                "(lists of ints) or use mode: online"
            )
        self.table, self.image_size, self.num_actions, self.base_dir = table, image_size, num_actions, base_dir
        self.columns = (chosen_column, rejected_column)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.table[index]
        item = {"prompt": row["prompt"]}
        for name, column in zip(("chosen", "rejected"), self.columns):
            value = row[column]
            if self.kind == "actions":
                actions = torch.as_tensor(value, dtype=torch.long)
                if actions.shape != (self.num_actions,):
                    raise ValueError(
                        f"row {index}, column {column!r}: {tuple(actions.shape)} actions, the policy "
                        f"takes ({self.num_actions},)"
                    )
                item[name] = actions
            else:
                item[name] = load_image(value, self.base_dir, self.image_size)
        return item


def collate_pairs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Pair rows -> `{"prompt": [B], "chosen": (B, ...), "rejected": (B, ...)}`."""
    return {
        "prompt": [row["prompt"] for row in rows],
        "chosen": torch.stack([row["chosen"] for row in rows]),
        "rejected": torch.stack([row["rejected"] for row in rows]),
    }


def collate_prompts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Prompt rows (online DPO) -> `{"prompt": [B], "columns": {name: [B]}}`: the other columns reach the rewards."""
    return {
        "prompt": [row["prompt"] for row in rows],
        "columns": {key: [row[key] for row in rows] for key in rows[0] if key != "prompt"},
    }


# ----------------------------------------------------------------------------------------- ranked groups
class RankedGroups(NamedTuple):
    """Per group of `num_generations` consecutive samples: the index (into the samples) of the best and of the
    worst, whether the group has a pair at all (`valid`: at least two scored samples and best > worst), and each
    sample's logged reward (the weighted raw sum, NaN where no reward scored it: GRPO's `reward`)."""

    best: torch.Tensor  # (G,) long
    worst: torch.Tensor  # (G,) long
    valid: torch.Tensor  # (G,) bool
    totals: torch.Tensor  # (N,) float


def rank_groups(rewards_per_func: torch.Tensor, rewards: RewardSet, num_generations: int) -> RankedGroups:
    """Best and worst of each group by the rewards `(N, R)` (NaN = no score), combined exactly as GRPO combines
    them before its advantages (weights, and `normalize: true` rewards z-scored over the batch first), so DPO and
    GRPO rank the same images the same way. Unscored samples are never picked; ties give no pair."""
    result = group_advantages(
        rewards_per_func, rewards.weights, num_generations, "none", "sum_then_normalize", rewards.normalize
    )
    scored = ~torch.isnan(result.rewards).view(-1, num_generations)  # (G, n)
    ranking = result.advantages.view(-1, num_generations)  # the combined reward minus its group mean
    best_value, best = ranking.masked_fill(~scored, -torch.inf).max(dim=1)
    worst_value, worst = ranking.masked_fill(~scored, torch.inf).min(dim=1)
    valid = (scored.sum(dim=1) >= 2) & (best_value > worst_value)
    offsets = torch.arange(ranking.size(0), device=ranking.device) * num_generations
    return RankedGroups(best + offsets, worst + offsets, valid, result.rewards)


class SampledGroups(NamedTuple):
    """A group of images per prompt, scored and ranked: `actions` `(N, T)`, `images` `(N, 3, H, W)`, rewards
    `(N, R)` (NaN = no score), and the ranking (`RankedGroups`). Rows are grouped by prompt."""

    actions: torch.Tensor
    images: torch.Tensor
    rewards_per_func: torch.Tensor
    ranked: RankedGroups


@torch.no_grad()
def sample_and_rank(
    policy: Policy,
    model: torch.nn.Module,
    prompts: list[str],
    columns: dict[str, list[Any]],
    rewards: RewardSet,
    num_generations: int,
    sampling: Sampling,
    generators: SampleGenerators,
    device: torch.device | str,
) -> SampledGroups:
    """Sample `num_generations` images for each prompt with the given per-sample generators (one per image, rows
    grouped by prompt), decode, score with the reward set, rank each group."""
    repeated = [prompt for prompt in prompts for _ in range(num_generations)]
    repeated_columns = {
        key: [value for value in values for _ in range(num_generations)] for key, values in columns.items()
    }
    rollout = policy.sample(model, policy.encode_prompts(repeated, device), sampling, generators)
    images = policy.decode(rollout.actions)
    rewards_per_func = rewards.score(repeated, images, repeated_columns)
    ranked = rank_groups(rewards_per_func, rewards, num_generations)
    return SampledGroups(rollout.actions, images, rewards_per_func, ranked)


def write_ranked_pairs(
    policy: Policy,
    prompts: Dataset,
    rewards: RewardSet,
    output_dir: str,
    *,
    num_generations: int,
    sampling: Sampling,
    seed: int,
    prompts_per_batch: int,
    device: torch.device | str = "cpu",
) -> dict[str, int]:
    """Sample a group per prompt from `policy`, keep each group's best and worst image (by the rewards) and write
    them as a pair table: `output_dir/pairs.jsonl` (`prompt`, `chosen` / `rejected` PNG paths relative to it,
    `chosen_actions` / `rejected_actions`, `chosen_reward` / `rejected_reward`, the prompt's other columns) and
    `output_dir/images/`. Image k of prompt i is drawn from its own seeded stream, so the table depends only on
    the seed and the prompts. Returns `{"prompts", "pairs", "no_spread"}` counts."""
    os.makedirs(os.path.join(output_dir, "images"), exist_ok=True)
    counts = {"prompts": 0, "pairs": 0, "no_spread": 0}
    with open(os.path.join(output_dir, "pairs.jsonl"), "w", encoding="utf-8") as table:
        for start in range(0, len(prompts), prompts_per_batch):
            rows = prompts.select(range(start, min(start + prompts_per_batch, len(prompts))))
            batch = collate_prompts(list(rows))
            indices = range(start * num_generations, (start + len(rows)) * num_generations)
            generators = SampleGenerators.for_samples(seed, "dpo-pairs", 0, indices, device)
            groups = sample_and_rank(
                policy,
                policy.model,
                batch["prompt"],
                batch["columns"],
                rewards,
                num_generations,
                sampling,
                generators,
                device,
            )
            ranked = groups.ranked
            pictures = to_pil(groups.images)
            for group, prompt in enumerate(batch["prompt"]):
                counts["prompts"] += 1
                if not bool(ranked.valid[group]):
                    counts["no_spread"] += 1
                    continue
                number = start + group
                record = {"prompt": prompt}
                for name, index in (("chosen", int(ranked.best[group])), ("rejected", int(ranked.worst[group]))):
                    relative = os.path.join("images", f"{number:06d}-{name}.png")
                    pictures[index].save(os.path.join(output_dir, relative))
                    record[name] = relative
                    record[f"{name}_actions"] = groups.actions[index].tolist()
                    record[f"{name}_reward"] = float(ranked.totals[index])
                record.update({key: values[group] for key, values in batch["columns"].items() if key not in record})
                table.write(json.dumps(record) + "\n")
                counts["pairs"] += 1
    return counts
