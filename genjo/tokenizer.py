"""The tokenizer of the tiny embedded Genjo model.

A byte-level BPE (Hugging Face `tokenizers`) trained on `tinyworld.tokenizer_corpus()`:

- every digit is its own token (so sums and digit lists are easy to learn);
- a run of newlines is always split off on its own (prompt/answer consistency);
- byte-level, so any string round-trips exactly: decode(encode(text)) == text;
- six special tokens with fixed ids 0..5 (see `SPECIAL_TOKENS`), never split;
- `tokenizer(text)` adds no tokens (no BOS); the chat template adds the BOS;
- `encode_chat(tokenizer, messages)` renders a chat with the template and tokenizes what the user
  wrote as plain text, so typed text that spells a special token stays text. It works with any
  model's template; `chat_pieces` + `encode_pieces` are its two halves, for a caller that must carry
  the rendered string around before tokenizing it (the lm-eval adapter).

The diffusion mask token `<|mdm_mask|>` is deliberately NOT registered as the
tokenizer's `mask_token`; the model config carries its id explicitly.

Usage: `python -m genjo.tokenizer OUT_DIR` builds the tokenizer and saves it.
"""

import logging
import re
import sys
import weakref
from collections.abc import Iterable
from typing import Optional

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from . import tinyworld

logger = logging.getLogger(__name__)
# Per tokenizer, the chat templates already warned about: one warning, not one per prompt.
_WARNED_TEMPLATES: "weakref.WeakKeyDictionary[object, set[str]]" = weakref.WeakKeyDictionary()

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"  # also the padding token
MASK_TOKEN = "<|mdm_mask|>"  # the masked-diffusion mask
START_HEADER_TOKEN = "<|start_header_id|>"
END_HEADER_TOKEN = "<|end_header_id|>"
EOT_TOKEN = "<|eot_id|>"  # end of a chat turn

# Order matters: these get ids 0..5.
SPECIAL_TOKENS = (
    BOS_TOKEN,
    EOS_TOKEN,
    MASK_TOKEN,
    START_HEADER_TOKEN,
    END_HEADER_TOKEN,
    EOT_TOKEN,
)

# Llama-3 style. A single user turn with add_generation_prompt=True renders as
# <|startoftext|><|start_header_id|>user<|end_header_id|>\n\n{question}<|eot_id|>
# <|start_header_id|>assistant<|end_header_id|>\n\n   (one line, no line break).
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


def build_tokenizer(corpus: list[str] | None = None, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on `corpus` (default: `tinyworld.tokenizer_corpus()`).

    Deterministic: the same corpus always gives the same vocabulary and merges.
    """
    if corpus is None:
        corpus = tinyworld.tokenizer_corpus()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # A run of newlines is its own piece, so the "\n\n" closing a chat header
            # tokenizes the same whether or not content follows it (the generation
            # prompt ends with it): ids(prompt) is a prefix of ids(prompt + answer).
            pre_tokenizers.Split(Regex(r"\n+"), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),  # added first, so ids 0..5, and never split
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        chat_template=CHAT_TEMPLATE,
        padding_side="right",
        clean_up_tokenization_spaces=False,  # keep decode(encode(text)) == text
    )


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """Ids of the special tokens, keyed like the model config fields."""
    ids = tokenizer.convert_tokens_to_ids
    return {
        "bos_token_id": ids(BOS_TOKEN),
        "eos_token_id": ids(EOS_TOKEN),
        "pad_token_id": ids(EOS_TOKEN),
        "mask_token_id": ids(MASK_TOKEN),
        "start_header_id": ids(START_HEADER_TOKEN),
        "end_header_id": ids(END_HEADER_TOKEN),
        "eot_token_id": ids(EOT_TOKEN),
    }


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


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str) -> None:
    """Save in Hugging Face format; reload with `AutoTokenizer.from_pretrained(folder)`."""
    tokenizer.save_pretrained(folder)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m genjo.tokenizer OUT_DIR")
    tokenizer = build_tokenizer()
    save_tokenizer(tokenizer, sys.argv[1])
    print(f"saved tokenizer with {len(tokenizer)} tokens to {sys.argv[1]}")
