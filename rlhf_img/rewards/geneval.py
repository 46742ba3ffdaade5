"""`geneval`: GenEval (Ghosh et al., 2023) as a reward and as an evaluator, with pluggable detectors.

The rules live in `rlhf_img/geneval_rules.py` (shared by every detector, the shapes world and evaluation). This module supplies detections:

- `Mask2FormerDetector`: COCO instance segmentation with transformers' Mask2Former (GenEval uses mmdet's
  Mask2Former Swin-S COCO; `facebook/mask2former-swin-small-coco-instance` is the same architecture and
  training set). Boxes are read from the masks, as mmdet's Mask2Former head does.
- `ClipColorClassifier`: GenEval's colour rule. Each object is pasted on grey (#999) through its mask,
  cropped to its box and classified zero-shot by CLIP ViT-L-14 (OpenAI) over GenEval's 10 colours with its
  3 templates (text embeddings normalised, averaged over templates, renormalised).
- `ShapesDetector`: the shapes world's exact detector (colours known, no CLIP).
"""

from __future__ import annotations

import weakref
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F

from ..geneval_rules import (
    COUNTING_THRESHOLD,
    MAX_OBJECTS,
    THRESHOLD,
    Detection,
    Judgement,
    ObjectCredit,
    evaluate,
    select_detections,
)
from ..images import to_uint8
from .clip import OpenClip, default_device, load_open_clip
from .loading import RewardConfigError
from .registry import register_reward

# GenEval's `object_names.txt`: COCO's 80 classes in COCO order, with GenEval's spellings
GENEVAL_CLASSES = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "computer mouse",
    "tv remote",
    "computer keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)
GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES = (
    "a photo of a {color} {classname}",
    "a photo of a {color}-colored {classname}",
    "a photo of a {color} object",
)
CROP_BACKGROUND = 0x99 / 255  # GenEval pastes the masked object on #999
DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"


class Detector(Protocol):
    """Per image `{class: [Detection]}`. A detector may also define `for_prompt(selected, metadata)`, which
    the scorer applies to each image's selected detections before the rules (the shapes world's class of
    shape-free counts is one)."""

    def detect(self, images: torch.Tensor) -> list[dict[str, list[Detection]]]:
        """`(B, 3, H, W)` in [0, 1] -> per image `{class: [Detection]}` (any order; rules sort by score)."""
        ...


def box_from_mask(mask: torch.Tensor) -> tuple[float, float, float, float]:
    """Tight box `(x1, y1, x2, y2)` of a `(H, W)` bool mask, x2/y2 exclusive (mmdet's mask2bbox)."""
    rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


class Mask2FormerDetector:
    """COCO instance detections from a transformers Mask2Former checkpoint (hub id or local folder)."""

    def __init__(
        self,
        model: str = DEFAULT_DETECTOR,
        device: str | torch.device | None = None,
        class_names: Sequence[str] | None = None,
        min_score: float = THRESHOLD,
        batch_size: int = 8,
    ) -> None:
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        self.device = torch.device(device) if device is not None else default_device()
        self.processor = AutoImageProcessor.from_pretrained(model)
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(model).to(self.device).eval()
        num_labels = self.model.config.num_labels
        if class_names is None:
            class_names = (
                GENEVAL_CLASSES
                if num_labels == len(GENEVAL_CLASSES)
                else [self.model.config.id2label[i] for i in range(num_labels)]
            )
        if len(class_names) != num_labels:
            raise ValueError(f"geneval: {len(class_names)} class names for a detector with {num_labels} labels")
        self.class_names = list(class_names)
        self.min_score, self.batch_size = min_score, batch_size

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[dict[str, list[Detection]]]:
        pixels = to_uint8(images)
        height, width = pixels.shape[1:3]
        found: list[dict[str, list[Detection]]] = []
        for start in range(0, len(pixels), self.batch_size):
            chunk = list(pixels[start : start + self.batch_size])
            inputs = self.processor(images=chunk, return_tensors="pt").to(self.device)
            outputs = self.model(**inputs)
            results = self.processor.post_process_instance_segmentation(
                outputs, threshold=self.min_score, target_sizes=[(height, width)] * len(chunk), return_binary_maps=True
            )
            for result in results:
                detections: dict[str, list[Detection]] = {}
                for index, segment in enumerate(result["segments_info"]):
                    mask = result["segmentation"][index].bool().cpu()
                    if not mask.any():
                        continue
                    name = self.class_names[segment["label_id"]]
                    detections.setdefault(name, []).append(Detection(box_from_mask(mask), segment["score"], mask=mask))
                found.append(detections)
        return found


class ClipColorClassifier:
    """GenEval's zero-shot colour classifier (CLIP ViT-L-14, OpenAI weights, by default)."""

    def __init__(
        self, clip: OpenClip, colors: Sequence[str] = GENEVAL_COLORS, templates: Sequence[str] = COLOR_TEMPLATES
    ) -> None:
        self.clip, self.colors, self.templates = clip, tuple(colors), tuple(templates)
        self._weights: dict[str, torch.Tensor] = {}

    def class_weights(self, classname: str) -> torch.Tensor:
        """`(D, colours)`: per colour, template embeddings normalised, averaged, renormalised."""
        if classname not in self._weights:
            texts = [t.format(color=c, classname=classname) for c in self.colors for t in self.templates]
            features = self.clip.text_features(texts).view(len(self.colors), len(self.templates), -1)
            self._weights[classname] = F.normalize(features.mean(1), dim=-1).t()
        return self._weights[classname]

    def crops(self, image: torch.Tensor, detections: Sequence[Detection]) -> list[torch.Tensor]:
        """Each object pasted on grey through its mask (if any) and cropped to its box (PIL's rounding)."""
        out = []
        for detection in detections:
            pasted = image
            if detection.mask is not None:
                mask = detection.mask.to(image.device)
                pasted = torch.where(mask[None], image, torch.full_like(image, CROP_BACKGROUND))
            x1, y1, x2, y2 = (int(round(v)) for v in detection.box)
            x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
            out.append(pasted[:, y1:y2, x1:x2])
        return out

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, classname: str, detections: Sequence[Detection]) -> list[str]:
        """Colour names of `detections` in one `(3, H, W)` image in [0, 1]."""
        if not detections:
            return []
        # crops differ in size: each is preprocessed alone (to the model's size), as GenEval's transform does
        features = torch.cat([self.clip.image_features(crop[None]) for crop in self.crops(image, detections)])
        return [self.colors[i] for i in (features @ self.class_weights(classname)).argmax(-1).tolist()]


class ShapesDetector:
    """The shapes world's exact detector (its detections carry their colour)."""

    def detect(self, images: torch.Tensor) -> list[dict[str, list[Detection]]]:
        from ..worlds.shapes_detector import detect

        return [detect(image) for image in to_uint8(images)]

    def for_prompt(self, selected: dict[str, list[Detection]], metadata: dict) -> dict[str, list[Detection]]:
        """The selected detections plus, for a shape-free count ("four shapes"), every detection as its class."""
        from ..worlds.shapes_detector import with_any_shape

        return with_any_shape(selected, metadata)


def clean_metadata(tag: str, include: list[dict], exclude: list[dict] | None = None, prompt: str | None = None) -> dict:
    """GenEval metadata from dataset columns: Arrow-typed rows carry absent clause keys as None."""

    def clean(clause: dict) -> dict:
        return {key: value for key, value in clause.items() if value is not None}

    metadata = {"tag": tag, "include": [clean(c) for c in include], "exclude": [clean(c) for c in exclude or []]}
    if prompt is not None:
        metadata["prompt"] = prompt
    return metadata


class GenEvalScorer:
    """Detector + GenEval's selection and rules (+ CLIP colours for detectors that do not know colours)."""

    def __init__(
        self,
        detector: Detector,
        color_classifier: ClipColorClassifier | None = None,
        threshold: float = THRESHOLD,
        counting_threshold: float = COUNTING_THRESHOLD,
        max_objects: int = MAX_OBJECTS,
    ) -> None:
        self.detector, self.color_classifier = detector, color_classifier
        self.threshold, self.counting_threshold, self.max_objects = threshold, counting_threshold, max_objects

    def judge(
        self, images: torch.Tensor, metadata: Sequence[dict], mode: str = "strict"
    ) -> tuple[list[Judgement], list[dict[str, list[Detection]]]]:
        """One `Judgement` per image, and the selected detections (for GenEval's `details`)."""
        detections = self.detector.detect(images)
        judgements, selected_all = [], []
        for image, found, meta in zip(images, detections, metadata):
            selected = select_detections(found, meta["tag"], self.threshold, self.counting_threshold, self.max_objects)
            if hasattr(self.detector, "for_prompt"):
                selected = self.detector.for_prompt(selected, meta)
            if self.color_classifier is not None:

                def classify(name, items, image=image):
                    return self.color_classifier(image.float(), name, items)

                judgements.append(evaluate(selected, meta, mode, classify))
            else:
                judgements.append(evaluate(selected, meta, mode))
            selected_all.append(selected)
        return judgements, selected_all


def build_scorer(
    detector: str = "mask2former",
    detector_model: str = DEFAULT_DETECTOR,
    clip_model: str = "ViT-L-14",
    clip_pretrained: str | None = "openai",
    device: str | None = None,
    batch_size: int = 8,
    class_names: Sequence[str] | None = None,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
    max_objects: int = MAX_OBJECTS,
) -> GenEvalScorer:
    """GenEval's setup by default: Mask2Former (COCO instance) + CLIP ViT-L-14 (OpenAI) colours."""
    if detector == "shapes":
        return GenEvalScorer(ShapesDetector(), None, threshold, counting_threshold, max_objects)
    if detector != "mask2former":
        raise RewardConfigError(f"geneval: detector must be 'mask2former' or 'shapes', got {detector!r}")
    if isinstance(class_names, str):  # a path to an object_names.txt
        with open(class_names) as f:
            class_names = [line.strip() for line in f if line.strip()]
    found = Mask2FormerDetector(detector_model, device, class_names, min(threshold, counting_threshold), batch_size)
    clip = load_open_clip(clip_model, clip_pretrained, device)
    return GenEvalScorer(found, ClipColorClassifier(clip), threshold, counting_threshold, max_objects)


@register_reward("geneval")
class GenEvalReward:
    """GenEval's rules on detections (detector: mask2former | shapes; mode: dense | strict); reads the
    `tag`, `include`, `exclude` columns of GenEval's evaluation_metadata.jsonl."""

    def __init__(self, mode: str = "dense", **scorer_kwargs) -> None:
        if mode not in ("dense", "strict"):
            raise RewardConfigError(f"geneval: mode must be 'dense' or 'strict', got {mode!r}")
        self.mode = mode
        self.scorer = build_scorer(**scorer_kwargs)
        # the last batch's judgements (clause credits are the same in both modes), keyed on the images tensor
        # itself (a weak reference, so a later tensor at the same address never matches): `object_credits` after
        # `__call__` on the same rollout batch reuses them instead of running the detector twice
        self._last: tuple[weakref.ref, list[str], list[Judgement]] | None = None

    def __call__(
        self,
        prompts: list[str],
        images: torch.Tensor,
        tag: list[str],
        include: list[list[dict]],
        exclude: list[list[dict] | None] | None = None,
        **columns,
    ) -> list[float]:
        return [judgement.score for judgement in self._judge(prompts, images, tag, include, exclude)]

    def object_credits(self, prompts: list[str], images: torch.Tensor, **columns) -> list[list[ObjectCredit]]:
        """Per image, each include clause's dense credit and the boxes it was judged on (`object_credit` in a
        recipe turns these into per-token advantages: docs/concepts/learning.md). Takes the columns `__call__`
        takes."""
        return [judgement.objects for judgement in self._judge(prompts, images, **columns)]

    def _judge(self, prompts, images, tag, include, exclude=None, **unused_columns) -> list[Judgement]:
        if self._last is not None and self._last[0]() is images and self._last[1] == prompts:
            return self._last[2]
        exclude = exclude or [None] * len(prompts)
        metadata = [clean_metadata(t, inc, exc) for t, inc, exc in zip(tag, include, exclude)]
        judgements = self.scorer.judge(images, metadata, self.mode)[0]
        self._last = (weakref.ref(images), list(prompts), judgements)
        return judgements
