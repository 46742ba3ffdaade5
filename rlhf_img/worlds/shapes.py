"""The shapes world: 32x32 images of circles, squares and triangles in named colours on a grey background,
with captions in GenEval's six task families and GenEval-format metadata per prompt.

Prompts follow GenEval's templates ("a photo of a red circle", "a photo of three squares", "a photo of a
circle left of a triangle", ...). Every prompt of every family is enumerated; a deterministic split by a
hash of the prompt text holds out ~20% per family (at least one), never seen in SFT or GRPO.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
BACKGROUND = (200, 200, 200)
SHAPES = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 220, 20),
    "purple": (150, 40, 190),
    "black": (20, 20, 20),
}
NUMBERS = {2: "two", 3: "three", 4: "four"}
RELATIONS = ("left of", "right of", "above", "below")
HELD_OUT_FRACTION = 0.2
ANY_SHAPE = "shape"  # the class of a shape-free count ("a photo of four shapes"): any shape, each drawn at random


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    cx: float
    cy: float
    radius: float  # half the box side, pixels


# ----------------------------------------------------------------------------------------------- prompts
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def all_prompts() -> list[dict]:
    """Every prompt of the world with GenEval metadata (`tag`, `include`, `exclude`, `prompt`)."""
    rows = []
    for shape in SHAPES:
        rows.append(
            {"tag": "single_object", "include": [{"class": shape, "count": 1}], "prompt": f"a photo of a {shape}"}
        )
    for a, b in itertools.permutations(SHAPES, 2):
        rows.append(
            {
                "tag": "two_object",
                "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                "prompt": f"a photo of a {a} and a {b}",
            }
        )
    for shape, (n, word) in itertools.product(SHAPES, NUMBERS.items()):
        rows.append(
            {
                "tag": "counting",
                "include": [{"class": shape, "count": n}],
                "exclude": [{"class": shape, "count": n + 1}],
                "prompt": f"a photo of {word} {shape}s",
            }
        )
    for shape, color in itertools.product(SHAPES, COLORS):
        rows.append(
            {
                "tag": "colors",
                "include": [{"class": shape, "count": 1, "color": color}],
                "prompt": f"a photo of {_article(color)} {color} {shape}",
            }
        )
    for (a, b), relation in itertools.product(itertools.permutations(SHAPES, 2), RELATIONS):
        rows.append(
            {
                "tag": "position",
                "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}],
                "prompt": f"a photo of a {a} {relation} a {b}",
            }
        )
    for (a, b), (ca, cb) in itertools.product(itertools.permutations(SHAPES, 2), itertools.permutations(COLORS, 2)):
        rows.append(
            {
                "tag": "color_attr",
                "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                "prompt": f"a photo of {_article(ca)} {ca} {a} and {_article(cb)} {cb} {b}",
            }
        )
    return rows


def shape_free_count_prompts() -> list[dict]:
    """Counting prompts that name no shape ("a photo of four shapes"), each object's shape drawn at random.

    Training-only and kept out of `all_prompts`, so the split and the held-out yardstick stay as they are: they let
    a model learn "four" as a number, where the split trains it only with triangles.
    """
    return [
        {
            "tag": "counting",
            "include": [{"class": ANY_SHAPE, "count": n}],
            "exclude": [{"class": ANY_SHAPE, "count": n + 1}],
            "prompt": f"a photo of {word} {ANY_SHAPE}s",
        }
        for n, word in NUMBERS.items()
    ]


def _hash(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)


CONVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _layout(row: dict) -> tuple | None:
    """A position prompt's scene, the same for both phrasings ("a circle left of a square" and "a square
    right of a circle"): (object, relation, anchor) with the phrasing whose object sorts first."""
    if row["tag"] != "position":
        return None
    anchor, obj = row["include"][0]["class"], row["include"][1]
    relation = obj["position"][0]
    return min((obj["class"], relation, anchor), (anchor, CONVERSE[relation], obj["class"]))


def split_prompts() -> tuple[list[dict], list[dict]]:
    """(train, held_out): per tag, the ~20% (at least one) prompts with the smallest hash are held out.

    A position prompt is skipped (kept for training) when the other phrasing of its scene is already held
    out: every held-out scene stays drawable from a trained phrasing, so position measures whether the
    relation words generalise, not whether a never-trained layout appears by chance.
    """
    train, held_out = [], []
    rows = all_prompts()
    for tag in dict.fromkeys(r["tag"] for r in rows):
        tagged = sorted((r for r in rows if r["tag"] == tag), key=lambda r: _hash(r["prompt"]))
        cut = max(1, round(HELD_OUT_FRACTION * len(tagged)))
        chosen, scenes = [], set()
        for row in tagged:
            scene = _layout(row)
            if len(chosen) < cut and (scene is None or scene not in scenes):
                chosen.append(row)
                scenes.add(scene)
        held_out += chosen
        train += [r for r in tagged if r not in chosen]
    return train, held_out


def tag_balanced(rows: list[dict]) -> list[dict]:
    """`rows` with each tag's prompts repeated (in order) up to the largest tag's count, so uniform sampling
    over rows is uniform over tags: GenEval's overall is an unweighted mean over tags, while color_attr alone
    has three quarters of the prompts."""
    by_tag: dict[str, list[dict]] = {}
    for row in rows:
        by_tag.setdefault(row["tag"], []).append(row)
    target = max(len(group) for group in by_tag.values())
    return [group[i % len(group)] for group in by_tag.values() for i in range(target)]


# ------------------------------------------------------------------------------------------------ scenes
def _place(rng: random.Random, radius: float, others: list[ShapeObject], box=None, tries: int = 200):
    """A centre for a new object that keeps a gap to `others`, inside `box` = (x0, y0, x1, y1) if given."""
    x0, y0, x1, y1 = box or (0, 0, IMAGE_SIZE, IMAGE_SIZE)
    lo_x, hi_x = max(x0, radius + 1), min(x1, IMAGE_SIZE - radius - 1)
    lo_y, hi_y = max(y0, radius + 1), min(y1, IMAGE_SIZE - radius - 1)
    if lo_x > hi_x or lo_y > hi_y:
        return None
    for _ in range(tries):
        # centres on pixel centres: small discs then rasterise symmetrically and never look square
        cx, cy = int(rng.uniform(lo_x, hi_x)) + 0.5, int(rng.uniform(lo_y, hi_y)) + 0.5
        if not (lo_x <= cx <= hi_x and lo_y <= cy <= hi_y):
            continue
        if all(max(abs(cx - o.cx), abs(cy - o.cy)) > radius + o.radius + 2 for o in others):
            return cx, cy
    return None


def sample_scene(metadata: dict, rng: random.Random) -> list[ShapeObject]:
    """Objects that satisfy `metadata` (random sizes, positions and free colours)."""
    for _ in range(100):
        objects: list[ShapeObject] = []
        ok = True
        for clause in metadata["include"]:
            for _ in range(clause["count"]):
                radius = rng.uniform(5.0, 6.0)
                color = clause.get("color") or rng.choice(list(COLORS))
                box = None
                if clause.get("position"):
                    relation, group = clause["position"]
                    target = objects[group]  # include clause `group` placed one object first
                    gap = 2 + 0.25 * (radius + target.radius)
                    box = {
                        "left of": (0, 0, target.cx - radius - target.radius - gap, IMAGE_SIZE),
                        "right of": (target.cx + radius + target.radius + gap, 0, IMAGE_SIZE, IMAGE_SIZE),
                        "above": (0, 0, IMAGE_SIZE, target.cy - radius - target.radius - gap),
                        "below": (0, target.cy + radius + target.radius + gap, IMAGE_SIZE, IMAGE_SIZE),
                    }[relation]
                    # keep the other axis close so the relation is unambiguous
                    if relation in ("left of", "right of"):
                        box = (box[0], max(0, target.cy - 3), box[2], min(IMAGE_SIZE, target.cy + 3))
                    else:
                        box = (max(0, target.cx - 3), box[1], min(IMAGE_SIZE, target.cx + 3), box[3])
                spot = _place(rng, radius, objects, box)
                if spot is None:
                    ok = False
                    break
                shape = rng.choice(SHAPES) if clause["class"] == ANY_SHAPE else clause["class"]
                objects.append(ShapeObject(shape, color, spot[0], spot[1], radius))
            if not ok:
                break
        if ok:
            return objects
    raise RuntimeError(f"could not place a scene for {metadata['prompt']!r}")


def render(objects: list[ShapeObject]) -> np.ndarray:
    """`(H, W, 3)` uint8: flat colours, no antialiasing, so the detector can be exact."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5
    for obj in objects:
        dx, dy, r = xs - obj.cx, ys - obj.cy, obj.radius
        if obj.shape == "circle":
            mask = dx**2 + dy**2 <= r**2
        elif obj.shape == "square":
            mask = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
        elif obj.shape == "triangle":  # apex up; half-width grows from 0 at the top to r at the bottom
            mask = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}")
        image[mask] = COLORS[obj.color]
    return image


def render_prompt(metadata: dict, seed: int) -> np.ndarray:
    return render(sample_scene(metadata, random.Random(seed)))
