"""Word constraints: answer tokens fixed at given positions while the sampler fills in the rest.

The demo's ``position:word`` text is parsed by ``parse_constraints``, turned into answer position -> token id by
``constraint_token_ids`` and held in place by ``ConstrainedModel``, a proxy around the model that ``generate()``
samples from as from any model (the sampler has no hook for fixed tokens, and needs none).
"""

import re
from types import SimpleNamespace
from typing import Optional

import torch

from .chat_format import encode_plain


def parse_constraints(text: Optional[str], gen_length: Optional[int] = None) -> dict[int, str]:
    """'0:Once, 5:upon' -> {0: 'Once', 5: 'upon'}. Empty parts are ignored.

    Raises ValueError naming the part when it is not ``position:word`` with a whole-number position >= 0
    and a non-blank word, when a position is given twice, or when it lies past the answer (gen_length).
    """
    constraints = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        pos, sep, word = part.partition(":")
        pos, word = pos.strip(), word.strip()
        if not sep or not re.fullmatch(r"\d+", pos) or not word:
            raise ValueError(
                f"Word constraint {part.strip()!r} is not position:word (a whole number >= 0, a colon and a "
                "word), e.g. 2:delta."
            )
        if int(pos) in constraints:
            raise ValueError(f"Word constraint position {pos} is given twice.")
        if gen_length is not None and int(pos) >= gen_length:
            raise ValueError(
                f"Word constraint position {pos} is past the end of the answer: positions are 0 to "
                f"{gen_length - 1} (Generation Length {gen_length})."
            )
        constraints[int(pos)] = word
    return constraints


def constraint_token_ids(tokenizer, constraints: dict[int, str], gen_length: int) -> dict[int, int]:
    """Answer position -> token id. A word's tokens fill pos, pos+1, ...; after position 0 the word is
    encoded with a leading space (as words inside an answer are).

    Tokens falling past the end of the answer are dropped; later positions overwrite earlier ones. A word
    is plain text, like the message: one that spells a special token (``<|mdm_mask|>``) stays characters.
    """
    fixed = {}
    for pos, word in sorted(constraints.items()):
        text = word if pos == 0 else " " + word
        for offset, token in enumerate(encode_plain(tokenizer, text)):
            if pos + offset < gen_length:
                fixed[pos + offset] = token
    return fixed


class ConstrainedModel:
    """The model with some answer slots held at constraint tokens (generate() has no hook for them).

    Every forward sees the constraint tokens in their slots, as if they had been written into the canvas
    from the start; unconditional CFG rows (recognised by their masked BOS column) see them masked, as
    prompt. At those slots the logits are replaced by a one-hot (0 for the token, -1e4 elsewhere), so
    the sampler proposes exactly the constraint there with confidence 1 and commits it early.
    columns: (K,) int64 canvas columns; tokens: (K,) int64 token ids.
    """

    def __init__(self, model, columns: torch.Tensor, tokens: torch.Tensor, mask_id: int):
        self.model, self.columns, self.tokens, self.mask_id = model, columns, tokens, mask_id
        self.config = model.config
        self.device = getattr(model, "device", None)

    def __call__(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **kwargs):
        """input_ids: (B, T) int64; returns an object whose ``logits`` are (B, T, V)."""
        x = input_ids.clone()  # (B, T)
        conditional = x[:, 0] != self.mask_id  # (B,)
        x[:, self.columns] = torch.where(conditional[:, None], self.tokens, self.mask_id)
        logits = self.model(x, attention_mask=attention_mask, **kwargs).logits.clone()  # (B, T, V)
        logits[:, self.columns] = -1e4
        logits[:, self.columns, self.tokens] = 0.0
        return SimpleNamespace(logits=logits)
