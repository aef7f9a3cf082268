"""Chat prompts: the one builder of the token ids a model reads, for chat.py, the app, the eval harness, batch
generation, the evaluation helpers and training data.

Every prompt is the tokenizer's chat template over a list of messages ``[{"role": ..., "content": str}, ...]``.
The template's own special tokens (BOS, headers, <|eot_id|>) stay special; what a user wrote is tokenized as
plain text, so typed text that spells a special token (``<|eot_id|>``, ``<|mdm_mask|>``) can neither end a
turn nor plant a mask (``encode_chat``). ``chat_pieces`` + ``encode_pieces`` are its two halves, for a caller
that must carry the rendered string before tokenizing it (the lm-eval adapter).

History policy (``conversation_messages``): a conversation is sent whole, every earlier question and answer
as the template renders them, to a model that holds multi-turn conversations. A single-turn model (the
embedded tiny-world ones, ``is_single_turn``) gets only the last question unless the caller asks for the
whole history: it was never trained on a second turn, and a second question in the same conversation gets a
garbled answer.
"""

import logging
import re
import weakref
from collections.abc import Iterable, Sequence
from typing import Optional

import torch

from .tokenizer import MASK_TOKEN

logger = logging.getLogger(__name__)
# Per tokenizer, the chat templates already warned about: one warning, not one per prompt.
_WARNED_TEMPLATES: "weakref.WeakKeyDictionary[object, set[str]]" = weakref.WeakKeyDictionary()
# The tiny-world tokenizer has 512 tokens; any released large model has far more.
SINGLE_TURN_VOCAB = 1024


def chat_pieces(
    tokenizer, messages: list[dict], add_generation_prompt: bool = True, continue_final_message: bool = False
) -> list[tuple[str, bool]]:
    """A chat rendered by the tokenizer's chat template, split into ``(text, from_template)`` pieces.

    The texts concatenate to ``tokenizer.apply_chat_template(messages, tokenize=False, ...)``; the
    template's own text (BOS, headers, <|eot_id|>, the generation prompt) has from_template=True, each
    message's content False. To find them the template is rendered a second time with a private-use
    placeholder instead of each content: the text between the placeholders is the template's. A content
    may appear as is or stripped (templates trim; a continued final message loses its trailing
    whitespace). Works for any template that writes each content once, in order (the embedded models'
    and Llama-3's); for one that hides or rewrites a message the whole text is one template piece, with
    a warning (a special token spelled in a message is then read as special, the mask never is).

    messages: [{"role": ..., "content": str}, ...].
    continue_final_message: the last message is the open start of the assistant's answer (a
        ``gen_prefix``); exclusive with add_generation_prompt.
    """
    options = dict(tokenize=False, add_generation_prompt=add_generation_prompt,
                   continue_final_message=continue_final_message)  # fmt: skip
    text = tokenizer.apply_chat_template(messages, **options)
    pieces = _template_pieces(tokenizer, messages, text, options)
    if pieces is None:
        warned = _WARNED_TEMPLATES.setdefault(tokenizer, set())
        if str(tokenizer.chat_template) not in warned:
            logger.warning("Could not tell the chat template's text from the messages': special tokens spelled in "
                           "a message will be read as special tokens (never the mask).")  # fmt: skip
            warned.add(str(tokenizer.chat_template))
        pieces = [(text, True)] if text else []
    return pieces


def _template_pieces(tokenizer, messages: list[dict], text: str, options: dict) -> Optional[list]:
    """``chat_pieces`` of the rendered ``text``, or None when the template hides the messages."""
    contents = [message.get("content") for message in messages]
    if not all(isinstance(content, str) for content in contents):
        return None
    holders = [f"\ue000{i}\ue001" for i in range(len(messages))]
    try:
        shell = tokenizer.apply_chat_template(
            [{**message, "content": holder} for message, holder in zip(messages, holders)], **options
        )
    except Exception:  # noqa: BLE001 - any failure here only loses the separation, reported by the caller
        return None
    if re.findall("\ue000\\d+\ue001", shell) != holders:
        return None
    parts = re.split("\ue000\\d+\ue001", shell)  # len(messages) + 1 pieces of the template's text
    pieces, pos = [], 0
    for i, content in enumerate(contents):
        if not text.startswith(parts[i], pos):
            return None
        pieces.append((parts[i], True))
        pos += len(parts[i])
        following, last = parts[i + 1], i == len(contents) - 1
        for shown in dict.fromkeys((content, content.strip(), content.rstrip(), content.lstrip())):
            end = pos + len(shown)
            if text.startswith(shown, pos) and (text[end:] == following if last else text.startswith(following, end)):
                break
        else:
            return None
        pieces.append((shown, False))
        pos = end
    pieces.append((parts[-1], True))
    if "".join(piece for piece, _ in pieces) != text:
        return None
    return [(piece, template) for piece, template in pieces if piece]


def encode_plain(tokenizer, text: str) -> list[int]:
    """Ids of plain text: a spelled special token (``<|eot_id|>``, ``<|mdm_mask|>``) stays characters."""
    if not text:
        return []
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def encode_pieces(tokenizer, pieces: Iterable[tuple[str, bool]], mask_id: Optional[int] = None) -> list[int]:
    """Token ids of a prompt given as ``(text, from_template)`` pieces (see ``chat_pieces``); no BOS added.

    The tokenizer's added tokens are read only in the template's pieces, and the diffusion mask (mask_id,
    default the id of ``<|mdm_mask|>``) never: a prompt holds no mask. The text between two special
    tokens is tokenized as one string, as the tokenizer itself does, so when no message spells a special
    token the ids equal ``tokenizer("".join(texts), add_special_tokens=False)["input_ids"]``.
    """
    mask = tokenizer.convert_tokens_to_ids(MASK_TOKEN) if mask_id is None else mask_id
    added = {token.content: i for i, token in tokenizer.added_tokens_decoder.items() if i != mask}
    found = re.compile("|".join(re.escape(token) for token in sorted(added, key=len, reverse=True)) or "(?!)")
    ids: list[int] = []
    plain = ""  # text waiting for the next special token (or the end)
    for text, template in pieces:
        if not template:
            plain += text
            continue
        pos = 0
        for match in found.finditer(text):
            ids += encode_plain(tokenizer, plain + text[pos : match.start()])
            ids.append(added[match.group()])
            plain, pos = "", match.end()
        plain += text[pos:]
    return ids + encode_plain(tokenizer, plain)


def encode_chat(
    tokenizer,
    messages: list[dict],
    add_generation_prompt: bool = True,
    gen_prefix: Optional[str] = None,
    mask_id: Optional[int] = None,
) -> list[int]:
    """Token ids of a chat rendered by the tokenizer's chat template, every message's content as plain text.

    The template's own special tokens (BOS, headers, <|eot_id|>) stay special, but text a user typed that
    spells one (e.g. "<|mdm_mask|>" or "<|eot_id|>") is tokenized as ordinary characters, so it can
    neither end a turn nor plant a mask in the prompt. For content without such text the ids equal
    ``tokenizer(apply_chat_template(messages, tokenize=False), add_special_tokens=False)``.

    messages: [{"role": ..., "content": str}, ...], any number of turns.
    gen_prefix: the start of the assistant's answer, written after the generation prompt (as an open
        assistant message, ``continue_final_message``; the template may trim it); plain text too.
    mask_id: the diffusion mask's id, never produced (default the id of ``<|mdm_mask|>``).
    Returns a list of int ids (the template adds the BOS).
    """
    if gen_prefix:
        if not add_generation_prompt:
            raise ValueError("gen_prefix starts the assistant's answer, after the generation prompt: keep "
                             "add_generation_prompt=True.")  # fmt: skip
        messages = [*messages, {"role": "assistant", "content": gen_prefix}]
    pieces = chat_pieces(tokenizer, messages, add_generation_prompt=add_generation_prompt and not gen_prefix,
                         continue_final_message=bool(gen_prefix))  # fmt: skip
    return encode_pieces(tokenizer, pieces, mask_id)


def user_turn_ids(tokenizer, question: str) -> list[int]:
    """Token ids of one user message plus the assistant header, as the chat template renders it.

    Starts with the BOS: ``<|startoftext|><|start_header_id|>user<|end_header_id|>\\n\\n{question}<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n``. The question is tokenized as plain text.
    """
    return encode_chat(tokenizer, [{"role": "user", "content": question}], add_generation_prompt=True)


def left_padded(ids: Sequence[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (B, L) int64 input ids and their (B, L) attention mask (1 = token, 0 = padding)."""
    length = max(len(i) for i in ids)
    input_ids = torch.tensor([[pad_id] * (length - len(i)) + list(i) for i in ids], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (length - len(i)) + [1] * len(i) for i in ids], dtype=torch.long, device=device)
    return input_ids, mask


def question_batch(tokenizer, questions: Sequence[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (B, L) int64 input ids and attention mask of single-turn chat prompts."""
    return left_padded([user_turn_ids(tokenizer, q) for q in questions], tokenizer.pad_token_id, device)


def is_single_turn(tokenizer) -> bool:
    """Whether the model is a tiny-world model (the embedded ones): trained on one question at a time."""
    return len(tokenizer) <= SINGLE_TURN_VOCAB


def conversation_messages(turns: Sequence, multi_turn: bool = True) -> list[dict]:
    """[(user, reply), ...] -> chat-template messages, the history policy of this module's docstring.

    A pending reply (None) adds the user turn only; an empty reply ("") stays an empty assistant turn, so
    the roles always alternate. With multi_turn False only the last user message is kept.
    """
    if not multi_turn:
        turns = list(turns)[-1:]
        return [{"role": "user", "content": turns[0][0]}] if turns else []
    messages = []
    for user, reply in turns:
        messages.append({"role": "user", "content": user})
        if reply is not None:
            messages.append({"role": "assistant", "content": reply})
    return messages
