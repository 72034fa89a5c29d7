"""Hugging Face transformers plumbing shared by the model grounders (`cogvlm`, `owlvit`):
the optional import with an install hint, device and dtype, and loading with an error
that says what to do when the weights are not on this machine.

transformers is an optional dependency of this plugin (extras `cogvlm`, `owlvit`,
`grounding`); nothing here imports it before a model grounder is built.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable

DTYPES = ("bfloat16", "float16", "float32")


class MissingDependency(ImportError, ValueError):
    """An optional library is not installed (a ValueError too, so that the core reports it
    as a configuration error naming the pipeline key)."""


def check_transformers(grounder: str, extra: str) -> None:
    """Fail early, without importing it, when transformers is not installed."""
    if importlib.util.find_spec("transformers") is None:
        raise MissingDependency(f"grounder '{grounder}' needs Hugging Face transformers, which is not installed: "
                                f"pip install 'reid-vge-labeler[{extra}]'")


def import_transformers(grounder: str, extra: str) -> Any:
    check_transformers(grounder, extra)
    import transformers

    return transformers


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"grounder.device is '{device}', but CUDA is not available here; use 'auto' or 'cpu'")
    return device


def torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise ValueError(f"grounder.dtype: unknown value {name!r}; valid values: {', '.join(DTYPES)}")
    return getattr(torch, name)


def dtype_kwargs(transformers: Any, dtype: Any) -> dict[str, Any]:
    """`from_pretrained`'s dtype argument: `dtype` since transformers 4.56, `torch_dtype` before."""
    try:
        major, minor = (int(v) for v in transformers.__version__.split(".")[:2])
    except ValueError:
        major, minor = 5, 0
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def load_pretrained(grounder: str, what: str, name: str, loader: Callable[[], Any], extra: str,
                    size_hint: str = "") -> Any:
    """Call `loader()` (a `from_pretrained`), turning a missing download or a missing
    package of the model's remote code into an error that says what to do."""
    try:
        return loader()
    except ImportError as exc:  # remote code needing packages (CogVLM: xformers, einops, ...)
        raise MissingDependency(f"grounder '{grounder}': loading the {what} '{name}' needs a package that is not "
                                f"installed ({exc}); pip install 'reid-vge-labeler[{extra}]'") from None
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileNotFoundError(
            f"grounder '{grounder}': cannot load the {what} '{name}' ({first}). Nothing is downloaded where there "
            f"is no network: fetch it once where there is (`hf download {name}`{size_hint}) into the Hugging Face "
            f"cache, or point the grounder's key at a local folder") from None
