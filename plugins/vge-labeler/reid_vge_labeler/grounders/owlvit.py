"""`owlvit`: OWL-ViT / OWLv2 (Minderer et al. 2022, 2023) through Hugging Face
transformers — an open-vocabulary detector, far lighter than CogVLM (OWLv2 B/16: ~155 M
parameters against CogVLM's 17 B), as a real grounder for users without CogVLM's weights.

One text query per part; for each image and part the highest-scoring predicted box is
kept when its score (sigmoid of the class logit) reaches `threshold`, else the part is
not found. OWL-ViT predicts (cx, cy, w, h) fractions of its input: OWL-ViT v1 stretches
the image to a square, so these are fractions of the image; OWLv2 first pads the image
to a square (bottom and right), so they are fractions of that square and are rescaled to
the image (`padded_square`).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np

from core.records import Record
from reid_vge_labeler.grounders import hf
from reid_vge_labeler.grounders.base import Grounder, Grounding, image_size
from reid_vge_labeler.grounders.queries import part_queries

EXTRA = "owlvit"


def best_part_boxes(logits: np.ndarray, pred_boxes: np.ndarray, sizes: Sequence[tuple[int, int]],
                    padded_square: bool, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and query, the best-scoring box.

    logits: (B, N, P) class logits of N predicted boxes for P queries; pred_boxes: (B, N,
    4) (cx, cy, w, h) fractions of the model's input; sizes: (width, height) of each
    image. Returns boxes (B, P, 4) xyxy fractions of the image (clipped), found (B, P)
    (score >= threshold), scores (B, P)."""
    scores = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    best = scores.argmax(axis=1)  # (B, P)
    best_scores = np.take_along_axis(scores, best[:, None, :], axis=1)[:, 0]
    chosen = np.take_along_axis(np.asarray(pred_boxes, dtype=np.float64), best[..., None], axis=1)  # (B, P, 4)
    cx, cy, w, h = (chosen[..., i] for i in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
    if padded_square:
        wh = np.asarray(sizes, dtype=np.float64)  # (B, 2)
        side = wh.max(axis=1, keepdims=True)
        scale = np.concatenate([side / wh, side / wh], axis=1)  # (B, 4): S/W, S/H, S/W, S/H
        boxes = boxes * scale[:, None, :]
    return np.clip(boxes, 0.0, 1.0).astype(np.float32), best_scores >= threshold, best_scores.astype(np.float32)


class OwlViTGrounder(Grounder):
    """model: a Hugging Face name or local folder of an OWL-ViT / OWLv2 detector;
    query: a template with {part}, or {part: text}; threshold: the least score of a kept
    box; padded_square: null reads it from the image processor (OWLv2 pads, v1 does not)."""

    def __init__(self, parts: Sequence[str], model: str = "google/owlv2-base-patch16-ensemble",
                 query: str | dict[str, str] = "a photo of a person's {part}", threshold: float = 0.1,
                 device: str = "auto", dtype: Literal["bfloat16", "float16", "float32"] = "float32",
                 local_files_only: bool = False, padded_square: bool | None = None) -> None:
        super().__init__(parts)
        hf.check_transformers("owlvit", EXTRA)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"grounder.threshold is a score in [0, 1]; got {threshold}")
        hf.torch_dtype(dtype)  # validates the name
        self.queries = part_queries(query, self.parts)
        self.model_name, self.threshold, self.device_name, self.dtype = model, float(threshold), device, dtype
        self.local_files_only, self.padded_square = local_files_only, padded_square
        self._model: Any = None
        self._tokenizer: Any = None
        self._image_processor: Any = None

    @classmethod
    def from_components(cls, parts: Sequence[str], model: Any, tokenizer: Any, image_processor: Any,
                        **kwargs: Any) -> "OwlViTGrounder":
        """A grounder around an already built model, tokenizer and image processor (tests,
        notebooks)."""
        grounder = cls(parts, **kwargs)
        grounder._model, grounder._tokenizer, grounder._image_processor = model, tokenizer, image_processor
        return grounder

    def _load(self) -> None:
        if self._model is not None:
            return
        transformers = hf.import_transformers("owlvit", EXTRA)
        processor = hf.load_pretrained("owlvit", "processor", self.model_name, lambda: transformers.AutoProcessor
                                       .from_pretrained(self.model_name, local_files_only=self.local_files_only), EXTRA)
        model = hf.load_pretrained("owlvit", "model", self.model_name, lambda: transformers
                                   .AutoModelForZeroShotObjectDetection.from_pretrained(
                                       self.model_name, local_files_only=self.local_files_only,
                                       **hf.dtype_kwargs(transformers, hf.torch_dtype(self.dtype))), EXTRA)
        self._model, self._tokenizer, self._image_processor = model, processor.tokenizer, processor.image_processor

    def ground(self, images: list[Any], records: list[Record]) -> Grounding:
        import torch

        self._load()
        device = hf.resolve_device(self.device_name)
        model = self._model.to(device=device, dtype=hf.torch_dtype(self.dtype)).eval()
        text = self._tokenizer(self.queries * len(images), padding="max_length", truncation=True,
                               return_tensors="pt")
        pixels = self._image_processor(images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out = model(input_ids=text["input_ids"].to(device), attention_mask=text["attention_mask"].to(device),
                        pixel_values=pixels.to(device=device, dtype=hf.torch_dtype(self.dtype)))
        padded = self.padded_square
        if padded is None:
            padded = bool(getattr(self._image_processor, "do_pad", False))
        boxes, found, scores = best_part_boxes(out.logits.float().cpu().numpy(), out.pred_boxes.float().cpu().numpy(),
                                               [image_size(im) for im in images], padded, self.threshold)
        return Grounding(boxes=boxes, found=found, extras={"part_scores": scores})
