"""The tokenizer of the tiny embedded Genjo model.

A byte-level BPE (Hugging Face `tokenizers`) trained on `tinyworld.tokenizer_corpus()`:

- every digit is its own token (so sums and digit lists are easy to learn);
- a run of newlines is always split off on its own (prompt/answer consistency);
- byte-level, so any string round-trips exactly: decode(encode(text)) == text;
- six special tokens with fixed ids 0..5 (see `SPECIAL_TOKENS`), never split;
- `tokenizer(text)` adds no tokens (no BOS); the chat template adds the BOS;
- chat prompts are built by `genjo.chat_format` (with any model's template, this one's included).

The diffusion mask token `<|mdm_mask|>` is deliberately NOT registered as the
tokenizer's `mask_token`; the model config carries its id explicitly.

Usage: `python -m genjo.tokenizer OUT_DIR` builds the tokenizer and saves it.
"""

import sys

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from . import tinyworld

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


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str) -> None:
    """Save in Hugging Face format; reload with `AutoTokenizer.from_pretrained(folder)`."""
    tokenizer.save_pretrained(folder)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m genjo.tokenizer OUT_DIR")
    tokenizer = build_tokenizer()
    save_tokenizer(tokenizer, sys.argv[1])
    print(f"saved tokenizer with {len(tokenizer)} tokens to {sys.argv[1]}")
