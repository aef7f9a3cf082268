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


def check_int(name: str, value, minimum: Optional[int] = None) -> None:
    """ValueError unless value is an int (not a bool, not a float such as 32.0) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int; got {value!r} ({type(value).__name__}). Pass e.g. {name}=32.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} ({value}) must be >= {minimum}.")


def check_number(name: str, value, meaning: str = "") -> None:
    """ValueError unless value is a finite real number (an int or a float, not NaN or inf)."""
    if not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number; got {value!r} ({type(value).__name__}).{meaning}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value}.{meaning}")


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
