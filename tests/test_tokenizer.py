"""Tests for the tiny model's tokenizer (genjo/tokenizer.py)."""

import itertools
import random

import pytest
from transformers import AutoTokenizer

from genjo.tinyworld import (
    FAMILIES,
    chat_messages,
    plain_text,
    pretraining_documents,
    sample_problems,
    tokenizer_corpus,
)
from genjo.tokenizer import (
    SPECIAL_TOKENS,
    build_tokenizer,
    save_tokenizer,
    special_token_ids,
)

SINGLE_TURN = (
    "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n"
    "What is the capital of France?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
TWO_TURNS = (
    "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n"
    "What is 12 + 30?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
    "42<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n"
    "Sort: 3 1 2<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
TWO_TURN_MESSAGES = [
    {"role": "user", "content": "What is 12 + 30?"},
    {"role": "assistant", "content": " 42 \n"},  # content is trimmed
    {"role": "user", "content": "Sort: 3 1 2"},
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def reloaded(tok, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(tok, str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


def ids(tokenizer, text, **kwargs):
    return tokenizer(text, **kwargs)["input_ids"]


def test_special_tokens(tok):
    assert SPECIAL_TOKENS == (
        "<|startoftext|>",
        "<|endoftext|>",
        "<|mdm_mask|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    )
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(token) == i
        assert ids(tok, token) == [i]
        assert ids(tok, f"a{token}b")[1] == i  # never split, even glued to text
    assert special_token_ids(tok) == {
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
        "mask_token_id": 2,
        "start_header_id": 3,
        "end_header_id": 4,
        "eot_token_id": 5,
    }
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 1)
    assert tok.padding_side == "right"


def test_vocab_size(tok):
    assert len(tok) <= 512
    assert max(tok.get_vocab().values()) == len(tok) - 1


def test_no_bos_added(tok):
    x = ids(tok, "x")
    assert 0 not in x and x == ids(tok, "x", add_special_tokens=False)
    assert len(ids(tok, "")) == 0


def test_digits_are_single_tokens(tok):
    for d in "0123456789":
        assert len(ids(tok, d)) == 1
    for number in ["42", "1234567890", "2024", "99", "100"]:
        tokens = tok.convert_ids_to_tokens(ids(tok, number))
        assert tokens == list(number)
    assert tok.convert_ids_to_tokens(ids(tok, "What is 12 + 305?")).count("1") == 1
    # no token in the whole vocabulary glues a digit to anything else
    assert not any(any(c.isdigit() for c in t) and len(t) > 1 for t in tok.get_vocab())


ODD_STRINGS = [
    " leading space",
    "  two  spaces  ",
    "trailing newline\n",
    "\n\nleading newlines",
    "a\nb\n\nc\n\n\nd",
    "\t tab",
    "caf\u00e9 \u00e9t\u00e9 na\u00efve",
    "emoji \U0001f600 and \u4e2d\u6587",
    "Hello, world! (ok?) [x] {y} 'q' \"z\" -- ; : 1.5e-3 $5 50% a/b",
    "Bogota Reykjavik xray juliett",
    "",
]


@pytest.mark.parametrize("text", ODD_STRINGS)
def test_round_trip_odd_strings(tok, reloaded, text):
    assert tok.decode(ids(tok, text)) == text
    assert reloaded.decode(ids(reloaded, text)) == text


def test_round_trip_world_texts(tok):
    rng = random.Random(0)
    texts = list(itertools.islice(pretraining_documents(1), 300))
    for p in sample_problems(200, seed=1, split="any"):
        texts += [p.question, p.answer, " " + p.answer, plain_text(p, rng)]
        rendered = tok.apply_chat_template(chat_messages(p), tokenize=False)
        texts.append(rendered)
    for text in texts:
        assert tok.decode(ids(tok, text)) == text


def test_chat_template(tok, reloaded):
    for t in (tok, reloaded):
        single = [{"role": "user", "content": "What is the capital of France?"}]
        assert t.apply_chat_template(single, add_generation_prompt=True, tokenize=False) == SINGLE_TURN
        assert t.apply_chat_template(TWO_TURN_MESSAGES, add_generation_prompt=True, tokenize=False) == TWO_TURNS
        assert ids(t, TWO_TURNS) == ids(t, TWO_TURNS, add_special_tokens=False)
        assert ids(t, TWO_TURNS)[0] == 0 and ids(t, TWO_TURNS).count(0) == 1
        # Without a generation prompt the conversation ends after the last <|eot_id|>.
        assert t.apply_chat_template(TWO_TURN_MESSAGES[:2], tokenize=False) == (
            "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n"
            "What is 12 + 30?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
            "42<|eot_id|>"
        )


def test_reloaded_matches(tok, reloaded):
    text = "\n".join(tokenizer_corpus(50))
    assert ids(reloaded, text) == ids(tok, text)
    assert reloaded.get_vocab() == tok.get_vocab()
    assert special_token_ids(reloaded) == special_token_ids(tok)
    assert reloaded.padding_side == "right"


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_is_prefix_of_full_chat(tok, family):
    # Tokenizing the generation prompt alone gives a prefix of the full conversation.
    for p in sample_problems(100, seed=2, families=(family,)):
        messages = chat_messages(p)
        prompt = tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(messages, tokenize=False)
        assert full == prompt + p.answer + "<|eot_id|>"
        prompt_ids, full_ids = ids(tok, prompt), ids(tok, full)
        assert full_ids[: len(prompt_ids)] == prompt_ids
        assert full_ids[-1] == 5


def test_deterministic_build():
    corpus = tokenizer_corpus(3000, seed=0)
    a, b = build_tokenizer(corpus), build_tokenizer(corpus)
    assert a.get_vocab() == b.get_vocab()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
