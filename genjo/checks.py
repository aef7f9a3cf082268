"""Argument checks shared by the sampler, the likelihood estimator and the scripts.

Each raises a ValueError that names the argument and says how to fix it, before any forward pass.
"""

import math
import numbers
from typing import Optional

import torch

# Token ids of the published 8B vocabulary, used when the model config does not name its own.
MASK_ID = 126336
EOS_ID = 126081  # <|endoftext|>, also the padding token
EOT_ID = 126348  # <|eot_id|>
FALLBACK_TOKEN_IDS = {"mask_token_id": MASK_ID, "eos_token_id": EOS_ID, "eot_token_id": EOT_ID}


def config_int(model, name: str, fallback: Optional[int] = None) -> int:
    """The model config's integer field ``name`` (e.g. ``mask_token_id``, ``max_sequence_length``), else
    ``fallback``; the special-token ids fall back to the published 8B vocabulary's."""
    value = getattr(getattr(model, "config", None), name, None)
    if value is not None:
        return int(value)
    return FALLBACK_TOKEN_IDS[name] if fallback is None else fallback


def as_scalar(value):
    """A 0-d tensor as the Python number it holds (``.item()``: int for integer dtypes, float, bool); any
    other value unchanged. Sampler and likelihood settings may come as 0-d tensors (e.g. a schedule's
    ``torch.tensor(64)``); they are plain numbers from here on."""
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return value.item()
    return value


def check_int(name: str, value, minimum: Optional[int] = None) -> int:
    """value as an int, or a ValueError unless it is an int (not a bool, not a float such as 32.0, a 0-d
    integer tensor counts) >= minimum."""
    value = as_scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int; got {value!r} ({type(value).__name__}). Pass e.g. {name}=32.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} ({value}) must be >= {minimum}.")
    return int(value)


def check_number(name: str, value, meaning: str = "") -> float:
    """value as a Python number, or a ValueError unless it is a finite real number (an int or a float, or a
    0-d tensor of one; not NaN or inf)."""
    value = as_scalar(value)
    if not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number; got {value!r} ({type(value).__name__}).{meaning}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value}.{meaning}")
    return value


def vocabulary_size(model) -> Optional[int]:
    """How many token ids the model can embed (config embedding_size, else vocab_size), or None if unknown."""
    config = getattr(model, "config", None)
    size = getattr(config, "embedding_size", None) or getattr(config, "vocab_size", None)
    return None if size is None else int(size)


def check_token_ids(name: str, ids: torch.Tensor, model) -> None:
    """ValueError when ids holds a negative id or one the model cannot embed (which would crash in the embedding)."""
    size = vocabulary_size(model)
    if size is None or ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} holds the token id {bad}, outside the model's vocabulary 0..{size - 1}; "
                         "tokenize with this model's tokenizer.")  # fmt: skip


def check_token_id(name: str, value, model) -> int:
    """A single token id (mask_id, eos_id, ...) as an int, or a ValueError when it is not an int >= 0 or lies
    outside the model's vocabulary (which would crash in the embedding, or trip a device-side assert on CUDA)."""
    value = check_int(name, value, minimum=0)
    size = vocabulary_size(model)
    if size is not None and value >= size:
        raise ValueError(f"{name} ({value}) is outside the model's vocabulary 0..{size - 1}; "
                         "leave it None to use the model config's id.")  # fmt: skip
    return value


def check_finite_logits(reduced: torch.Tensor, where: str) -> None:
    """ValueError when a per-slot reduction of logits over the vocabulary (max or logsumexp: finite exactly
    when the slot's logits hold no NaN or +inf and are not all -inf) is not finite. where: e.g. "at block 0,
    step 3". The sampler and the likelihood stop with this one message."""
    if not bool(torch.isfinite(reduced).all()):
        bad = float(reduced[~torch.isfinite(reduced)][0])
        raise ValueError(f"the model returned non-finite logits ({bad}) {where}: check the weights and dtype "
                         "(e.g. fp16 overflow), or lower cfg_scale if the guidance overflows.")  # fmt: skip
