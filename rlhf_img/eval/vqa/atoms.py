"""Atoms and their questions: from GenEval metadata, from our prompt-file rows, from GenEval 2's rows.

Question templates follow GenEval 2's data file (facebookresearch/GenEval2, `geneval2_data.jsonl`): objects
"Are there any {plural} in the image?", counts "How many {plural} are in the image?" answered with a number
word, attributes "Is the {object} {colour}?" / "Are the {plural} {colour}?", relations "Is the {object}
{relation} the {object}?". GenEval 2 asks "How many" of every object, "a" included: an image with two cats for
"a cat" fails that atom (`counts="geneval2"`). GenEval's own rules only need at least `count` objects unless an
exclude clause caps them (`counts="geneval"`): the two modes differ exactly on images with extra objects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

ATOM_TYPES = ("object", "count", "color", "attribute", "position", "verb")
QUANTIFIERS = ("exactly", "at least", "fewer than")
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
COUNT_MODES = ("geneval2", "geneval")
# last words whose plural is not the regular one (GenEval's COCO class names end in these)
IRREGULAR_PLURALS = {
    "person": "people",
    "knife": "knives",
    "mouse": "mice",
    "sheep": "sheep",
    "skis": "skis",
    "scissors": "scissors",
}


@dataclass(frozen=True)
class Atom:
    """One primitive fact of a prompt, asked as one question.

    `answer` is the expected answer ("yes" for most atoms; a number word for "How many" counts, "no" for an
    absence). The structured fields are what an exact answerer reads; a VLM reads only `question`.
    """

    type: str
    question: str
    answer: str = "yes"
    subject: str | None = None
    count: int | None = None  # how many of `subject` the atom is about (None: 1)
    quantifier: str | None = None  # count atoms: "exactly" (None) | "at least" | "fewer than"
    color: str | None = None
    relation: str | None = None
    target: str | None = None
    target_count: int | None = None

    def to_json(self) -> dict:
        """The atom as a prompt-file entry (unset fields left out)."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], where: str = "atom") -> "Atom":
        """An atom from a prompt-file entry; Arrow-typed rows carry absent keys as None (dropped here)."""
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: an atom must be a mapping with 'type' and 'question', got {entry!r}")
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in entry.items() if value is not None}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"{where}: unknown atom key(s) {sorted(unknown)} (known: {sorted(known)})")
        missing = {"type", "question"} - set(values)
        if missing:
            raise ValueError(f"{where}: atom {dict(values)!r} lacks {sorted(missing)}")
        values["answer"] = str(values.get("answer", "yes")).strip().lower()
        if values.get("quantifier") not in (None, *QUANTIFIERS):
            raise ValueError(f"{where}: quantifier must be one of {QUANTIFIERS}, got {values['quantifier']!r}")
        if values.get("relation") not in (None, *RELATION_PHRASES):
            raise ValueError(f"{where}: relation must be one of {tuple(RELATION_PHRASES)}, got {values['relation']!r}")
        return cls(**values)


def plural(name: str) -> str:
    """English plural of a class name ("wine glass" -> "wine glasses", "person" -> "people")."""
    head, _, last = name.rpartition(" ")
    if last in IRREGULAR_PLURALS:
        last = IRREGULAR_PLURALS[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in tuple("aeiou"):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}" if head else last


def number_word(count: int) -> str:
    return NUMBER_WORDS[count] if 0 <= count < len(NUMBER_WORDS) else str(count)


def _noun(name: str, count: int) -> str:
    return name if count == 1 else plural(name)


def _be(count: int) -> str:
    return "Is" if count == 1 else "Are"


def object_atom(name: str) -> Atom:
    return Atom("object", f"Are there any {plural(name)} in the image?", subject=name)


def count_atom(name: str, count: int, quantifier: str = "exactly") -> Atom:
    """Exactly: GenEval 2's "How many" question, answered with a number word. The others are yes/no."""
    if quantifier == "exactly":
        return Atom(
            "count", f"How many {plural(name)} are in the image?", number_word(count), subject=name, count=count
        )
    if quantifier == "fewer than" and count == 1:  # an absence
        return Atom(
            "count", f"Are there any {plural(name)} in the image?", "no", subject=name, count=1, quantifier=quantifier
        )
    return Atom(
        "count",
        f"Are there {quantifier} {number_word(count)} {plural(name)} in the image?",
        subject=name,
        count=count,
        quantifier=quantifier,
    )


def color_atom(name: str, color: str, count: int = 1) -> Atom:
    return Atom(
        "color",
        f"{_be(count)} the {_noun(name, count)} {color}?",
        subject=name,
        color=color,
        count=None if count == 1 else count,
    )


def position_atom(name: str, relation: str, target: str, count: int = 1, target_count: int = 1) -> Atom:
    if relation not in RELATION_PHRASES:
        raise ValueError(f"vqa: relation must be one of {tuple(RELATION_PHRASES)}, got {relation!r}")
    question = f"{_be(count)} the {_noun(name, count)} {RELATION_PHRASES[relation]} the {_noun(target, target_count)}?"
    return Atom(
        "position",
        question,
        subject=name,
        relation=relation,
        target=target,
        count=None if count == 1 else count,
        target_count=None if target_count == 1 else target_count,
    )


def atoms_from_geneval(metadata: Mapping[str, Any], counts: str = "geneval2") -> list[Atom]:
    """Atoms of one GenEval metadata row (`include` [{class, count, color?, position?}], `exclude`).

    Per include clause: the object; its count (`counts="geneval2"`: exactly `count`, for every clause as GenEval 2
    does; `"geneval"`: exactly `count` only when an exclude clause of the same class caps it at `count`, else
    at least `count` when above one); its colour; its relation to the clause `position[1]` points at. Exclude
    clauses not folded into an exact count become "fewer than" atoms.
    """
    if counts not in COUNT_MODES:
        raise ValueError(f"vqa: counts must be one of {COUNT_MODES}, got {counts!r}")
    include = [dict(clause) for clause in metadata.get("include") or []]
    exclude = [dict(clause) for clause in metadata.get("exclude") or []]
    if not include:
        raise ValueError(f"vqa: GenEval row {metadata.get('prompt')!r} has no include clauses")
    caps = {clause["class"]: int(clause["count"]) for clause in exclude}
    folded = set()
    atoms: list[Atom] = []
    for index, clause in enumerate(include):
        name, count = clause["class"], int(clause["count"])
        atoms.append(object_atom(name))
        capped = caps.get(name) == count + 1
        if capped:
            folded.add(name)
        if counts == "geneval2" or capped:
            atoms.append(count_atom(name, count))
        elif count > 1:
            atoms.append(count_atom(name, count, "at least"))
        if clause.get("color") is not None:
            atoms.append(color_atom(name, clause["color"], count))
        if clause.get("position") is not None:
            relation, group = clause["position"]
            if not 0 <= int(group) < len(include) or int(group) == index:
                raise ValueError(
                    f"vqa: GenEval row {metadata.get('prompt')!r}: include clause {index} is positioned "
                    f"relative to clause {group}, which is not another include clause"
                )
            target = include[int(group)]
            atoms.append(position_atom(name, relation, target["class"], count, int(target["count"])))
    for clause in exclude:
        name, cap = clause["class"], int(clause["count"])
        if counts == "geneval2" and any(c["class"] == name and int(c["count"]) < cap for c in include):
            continue  # an exact count below the cap already says it
        if name not in folded:
            atoms.append(count_atom(name, cap, "fewer than"))
    return atoms


def atoms_from_geneval2(row: Mapping[str, Any]) -> list[Atom]:
    """Atoms of one GenEval 2 data row (`vqa_list` [[question, answer]], `skills` [object|count|attribute|...]).

    Questions and skills are kept as they are; answers are lower-cased ("Yes" -> "yes"); count atoms get
    `count` from their number word.
    """
    questions, skills = list(row.get("vqa_list") or []), list(row.get("skills") or [])
    if not questions or len(questions) != len(skills):
        raise ValueError(
            f"vqa: GenEval 2 row {row.get('prompt')!r} has {len(questions)} questions and "
            f"{len(skills)} skills; expected as many of each, at least one"
        )
    atoms = []
    for (question, answer), skill in zip(questions, skills):
        answer = str(answer).strip().lower()
        count = NUMBER_WORDS.index(answer) if skill == "count" and answer in NUMBER_WORDS else None
        atoms.append(Atom(str(skill), str(question), answer, count=count))
    return atoms


def atoms_for_row(row: Mapping[str, Any], counts: str = "geneval2") -> list[Atom]:
    """A row's atoms: its `atoms` column, else GenEval 2's `vqa_list`, else derived from GenEval metadata."""
    prompt = row.get("prompt")
    if row.get("atoms"):
        return [
            Atom.from_json(entry, f"vqa: prompt {prompt!r}, atom {number}") for number, entry in enumerate(row["atoms"])
        ]
    if row.get("vqa_list"):
        return atoms_from_geneval2(row)
    if row.get("include"):
        return atoms_from_geneval(row, counts)
    raise ValueError(
        f"vqa: prompt {prompt!r} has no atoms: give it an 'atoms' column, GenEval 2's 'vqa_list', or "
        "GenEval metadata ('tag', 'include', 'exclude')"
    )


def prompt_file_row(row: Mapping[str, Any], counts: str = "geneval2") -> dict:
    """`row` as a line of our prompt file: its own keys (GenEval metadata stays, for the GenEval judge) + `atoms`."""
    out = {key: value for key, value in row.items() if key not in ("vqa_list", "skills")}
    out["atoms"] = [atom.to_json() for atom in atoms_for_row(row, counts)]
    return out


def rows_from_columns(prompts: Sequence[str], columns: Mapping[str, Sequence | None]) -> list[dict]:
    """Per-sample rows from a reward call's dataset columns (`tag`, `include`, `exclude`, `atoms`, `vqa_list`,
    `skills`, `atom_count`), as plain dicts."""
    keys = [
        key
        for key in ("tag", "include", "exclude", "atoms", "vqa_list", "skills", "atom_count")
        if columns.get(key) is not None
    ]
    for key in keys:
        if len(columns[key]) != len(prompts):
            raise ValueError(f"vqa: column {key!r} has {len(columns[key])} values for {len(prompts)} prompts")
    return [{"prompt": prompt, **{key: columns[key][index] for key in keys}} for index, prompt in enumerate(prompts)]
