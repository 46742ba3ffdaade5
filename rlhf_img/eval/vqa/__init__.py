"""GenEval 2-style VQA evaluation (Kamath et al., 2025): each prompt is split into atoms (an object, its count,
a colour or other attribute, a relation), each atom is asked of a VQA model as one question, and Soft-TIFA
combines the answer probabilities into a per-image score.

Why atoms: GenEval's detector + CLIP judge drifts away from human judgement as generators drift away from COCO
photos; a VQA model asked one primitive question at a time stays aligned longer, and the per-atom answers say
*what* an image got wrong.

Pieces (one responsibility each):
- `atoms`: the `Atom` record, questions built from GenEval metadata (`tag`, `include`, `exclude`), and our
  prompt-file rows (`atoms` column) or GenEval 2's rows (`vqa_list` + `skills`) read into atoms.
- `answerers`: the `Answerer` protocol; `ShapesAnswerer` (the shapes world's exact detector, 0/1) and
  `VlmAnswerer` (any OpenAI-compatible VLM through `rlhf_img.rewards.vlm_client`).
- `scoring`: Soft-TIFA (arithmetic and geometric means), TIFA and strict aggregation, and `VqaJudge` for
  evaluation (per-image records and a table per tag, per atom type and per atomicity).
- `files`: reading/writing prompt files and converting GenEval metadata or GenEval 2's data file to ours
  (`python -m rlhf_img.eval.vqa.files SOURCE OUT`).

Prompt file format (JSONL, one prompt per line):

    {"prompt": "a photo of a red circle left of two squares",
     "tag": "position",                       # optional: groups the table (GenEval's tags, or your own)
     "atom_count": 4,                         # optional: GenEval 2's atomicity, groups the table too
     "atoms": [
       {"type": "object", "question": "Are there any circles in the image?", "subject": "circle"},
       {"type": "count", "question": "How many squares are in the image?", "answer": "two",
        "subject": "square", "count": 2},
       {"type": "color", "question": "Is the circle red?", "subject": "circle", "color": "red"},
       {"type": "position", "question": "Is the circle to the left of the squares?", "subject": "circle",
        "relation": "left of", "target": "square", "target_count": 2}]}

Per atom: `type` (object | count | color | attribute | position | verb, or any word of yours; it only groups
the table), `question` (asked verbatim, followed by the answerer's suffix), `answer` (the expected answer,
default "yes"; "no", or a number word for "How many ...?" questions). The other keys are optional and make
an atom answerable by an exact answerer (the shapes world's): `subject` (a class), `count` (how many of the
subject; default 1), `quantifier` for count atoms ("exactly" default, "at least", "fewer than"), `color`,
`relation` ("left of" | "right of" | "above" | "below"), `target` and `target_count`. Rows may also carry
GenEval's `tag` / `include` / `exclude` (atoms are then derived when `atoms` is absent) or GenEval 2's
`vqa_list` / `skills` / `atom_count` (read as they are).
"""

from .answerers import Answerer, ShapesAnswerer, VlmAnswerer, VqaAnswerError, answer_probability
from .atoms import ATOM_TYPES, Atom, atoms_for_row, atoms_from_geneval, atoms_from_geneval2
from .scoring import AGGREGATIONS, VqaJudge, aggregate, soft_tifa_am, soft_tifa_gm

__all__ = [
    "AGGREGATIONS",
    "ATOM_TYPES",
    "Answerer",
    "Atom",
    "ShapesAnswerer",
    "VlmAnswerer",
    "VqaAnswerError",
    "VqaJudge",
    "aggregate",
    "answer_probability",
    "atoms_for_row",
    "atoms_from_geneval",
    "atoms_from_geneval2",
    "soft_tifa_am",
    "soft_tifa_gm",
]
