"""`cogvlm`: MUVA's visual grounding expert (Sec. 3.2.3, 4.2) — CogVLM's grounding model
through Hugging Face transformers' remote code (`THUDM/cogvlm-grounding-generalist-hf`,
the HF port of the paper's `cogvlm-grounding-generalist-v1.1`), asked once per part

    "Guide me to the location of <p> within the image by providing its bounding boxes"

with <p> = "the head / upper body / legs of the person". Its answers hold boxes as
[[x0,y0,x1,y1]] on a 0-1000 scale (answers.parse_boxes); several boxes: `pick`.

Batching: for one part every image gets the same text and CogVLM's fixed number of
vision tokens, so a batch's prompts have one length and go through one `generate` call
per part (prompts of unequal length, e.g. from a model with another template, are
left-padded: pad token, language token type, attention 0). Greedy decoding, as the
model card.

The remote code was written for transformers 4.35 (the model card's pin); from 4.42 on
transformers changed `_extract_past_from_model_output`, which the remote code calls:
the grounder binds a version of it that returns the past key values as 4.35 did.
"""

from __future__ import annotations

import types
from typing import Any, Literal, Sequence

import numpy as np

from core.records import Record
from reid_vge_labeler.answers import Pick, parse_boxes, pick_box
from reid_vge_labeler.grounders import hf
from reid_vge_labeler.grounders.base import Grounder, Grounding, image_size
from reid_vge_labeler.grounders.queries import part_queries

EXTRA = "cogvlm"
#: MUVA's query (Sec. 3.2.3), <p> = "the <part> of the person"
PAPER_QUERY = "Guide me to the location of the {part} of the person within the image by providing its bounding boxes"
LANGUAGE_TOKEN_TYPE = 0


class CogVLMGrounder(Grounder):
    """model: a Hugging Face name or local folder of a CogVLM grounding model; tokenizer:
    its tokenizer (CogVLM v1 uses Vicuna's); query: a template with {part}, or {part:
    text}; scale: the coordinate scale of its answers; pick: the box kept when an answer
    holds several (first, largest, union); keep_answers: store the answers in the file."""

    def __init__(self, parts: Sequence[str], model: str = "THUDM/cogvlm-grounding-generalist-hf",
                 tokenizer: str = "lmsys/vicuna-7b-v1.5", query: str | dict[str, str] = PAPER_QUERY,
                 scale: float = 1000.0, pick: Pick = "first", max_new_tokens: int = 64, device: str = "auto",
                 dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16", local_files_only: bool = False,
                 keep_answers: bool = True) -> None:
        super().__init__(parts)
        hf.check_transformers("cogvlm", EXTRA)
        pick_box(np.zeros((0, 4)), pick)  # validates the rule
        if scale <= 0:
            raise ValueError(f"grounder.scale is the coordinate scale of the answers (1000 for CogVLM); got {scale}")
        if max_new_tokens < 8:
            raise ValueError(f"grounder.max_new_tokens must leave room for a box (>= 8); got {max_new_tokens}")
        hf.torch_dtype(dtype)
        self.queries = part_queries(query, self.parts)
        self.model_name, self.tokenizer_name = model, tokenizer
        self.scale, self.pick, self.max_new_tokens = float(scale), pick, int(max_new_tokens)
        self.device_name, self.dtype, self.local_files_only = device, dtype, local_files_only
        self.keep_answers = keep_answers
        self._model: Any = None
        self._tokenizer: Any = None

    @classmethod
    def from_components(cls, parts: Sequence[str], model: Any, tokenizer: Any, **kwargs: Any) -> "CogVLMGrounder":
        """A grounder around an already loaded model and tokenizer (tests, notebooks)."""
        grounder = cls(parts, **kwargs)
        grounder._model, grounder._tokenizer = model, tokenizer
        return grounder

    def _load(self) -> None:
        if self._model is not None:
            return
        transformers = hf.import_transformers("cogvlm", EXTRA)
        tokenizer = hf.load_pretrained("cogvlm", "tokenizer", self.tokenizer_name, lambda: transformers.AutoTokenizer
                                       .from_pretrained(self.tokenizer_name, local_files_only=self.local_files_only),
                                       EXTRA)
        # trust_remote_code: CogVLM exists only as the model repo's Python (README: "remote code"). It
        # runs when the user's own pipeline names this grounder (`core run` / `core label`, as its
        # plugins do); a run folder someone else made never labels (eval & co. build with prepare="skip",
        # run --resume with prepare="existing": tests/test_annotations.py)
        model = hf.load_pretrained("cogvlm", "model", self.model_name, lambda: transformers.AutoModelForCausalLM
                                   .from_pretrained(self.model_name, trust_remote_code=True, low_cpu_mem_usage=True,
                                                    local_files_only=self.local_files_only,
                                                    **hf.dtype_kwargs(transformers, hf.torch_dtype(self.dtype))),
                                   EXTRA, size_hint=", about 35 GB")
        model._extract_past_from_model_output = types.MethodType(_extract_past, model)
        self._model = model.to(hf.resolve_device(self.device_name)).eval()
        self._tokenizer = tokenizer

    def ground(self, images: list[Any], records: list[Record]) -> Grounding:
        self._load()
        out = self.empty(len(images))
        counts = np.zeros((len(images), len(self.parts)), dtype=np.int16)
        answers = np.full((len(images), len(self.parts)), "", dtype=object)
        sizes = [image_size(im) for im in images]
        for p, query in enumerate(self.queries):
            for i, answer in enumerate(self.answer(images, query)):
                answers[i, p] = answer
                boxes = parse_boxes(answer, sizes[i], self.scale)
                counts[i, p] = len(boxes)
                box = pick_box(boxes, self.pick)
                if box is not None:
                    out.boxes[i, p], out.found[i, p] = box, True
        out.extras["part_box_count"] = counts
        if self.keep_answers:
            out.extras["part_answers"] = answers.astype(str)
        return out

    def answer(self, images: list[Any], query: str) -> list[str]:
        """The model's answers to one query about each image, in one `generate` call."""
        import torch

        model, tokenizer = self._model, self._tokenizer
        device = hf.resolve_device(self.device_name)
        dtype = hf.torch_dtype(self.dtype)
        features = [model.build_conversation_input_ids(tokenizer, query=query, history=[], images=[image])
                    for image in images]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        inputs = left_pad(features, pad)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["images"] = [[f["images"][0].to(device=device, dtype=dtype)] for f in features]
        with torch.inference_mode():
            generated = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = generated[:, inputs["input_ids"].shape[1]:]
        return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]


def left_pad(features: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Stack per-image prompts (input_ids, token_type_ids, attention_mask: 1-D) into a
    batch, padding on the left so every prompt ends where generation starts."""
    import torch

    length = max(len(f["input_ids"]) for f in features)

    def padded(name: str, value: int) -> Any:
        rows = []
        for f in features:
            row = torch.as_tensor(f[name]).long()
            rows.append(torch.cat([torch.full((length - len(row),), value, dtype=torch.long), row]))
        return torch.stack(rows)

    return {"input_ids": padded("input_ids", pad_id),
            "token_type_ids": padded("token_type_ids", LANGUAGE_TOKEN_TYPE),
            "attention_mask": padded("attention_mask", 0)}


def _extract_past(self: Any, outputs: Any, standardize_cache_format: bool = False) -> Any:
    """transformers 4.35's `_extract_past_from_model_output` as CogVLM's remote code
    calls it (later versions return a pair, drop the keyword, or drop the method)."""
    return getattr(outputs, "past_key_values", None)
