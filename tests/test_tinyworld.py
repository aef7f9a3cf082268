"""Tests for the synthetic task world (genjo/tinyworld.py)."""

import itertools
import random
import re
from collections import Counter

import pytest

from genjo.tinyworld import (
    CAPITALS,
    FAMILIES,
    HELD_OUT_COUNTRIES,
    NATO_WORDS,
    PLAIN_TEMPLATES,
    PRETRAIN_WEIGHTS,
    Problem,
    chat_messages,
    is_held_out,
    plain_text,
    pretraining_documents,
    pretraining_problems,
    sample_problem,
    sample_problems,
    solve,
    tokenizer_corpus,
)

CAPITAL_OF = dict(CAPITALS)


def check_by_hand(p: Problem) -> None:
    """Verify an answer by direct computation, independently of `solve`."""
    if p.family == "capitals":
        m = re.fullmatch(r"What is the capital of (.+)\?", p.question)
        assert p.answer == CAPITAL_OF[m.group(1)]
    elif p.family == "sorting":
        m = re.fullmatch(r"Sort: (\d( \d)*)", p.question)
        digits = m.group(1).split(" ")
        assert 3 <= len(digits) <= 8
        answer = p.answer.split(" ")
        assert " ".join(answer) == p.answer  # single spaces
        assert Counter(answer) == Counter(digits)
        assert [int(d) for d in answer] == sorted(int(d) for d in digits)
    elif p.family == "reversal":
        m = re.fullmatch(r"Reverse: ([a-z]+( [a-z]+)*)", p.question)
        words = m.group(1).split(" ")
        assert 3 <= len(words) <= 6
        assert all(w in NATO_WORDS for w in words)
        assert p.answer == " ".join(words[::-1])
    else:
        m = re.fullmatch(r"What is (\d+) \+ (\d+)\?", p.question)
        a, b = int(m.group(1)), int(m.group(2))
        assert 0 <= a <= 99 and 0 <= b <= 99
        assert p.answer == str(a + b)


def test_tables():
    assert FAMILIES == ("capitals", "sorting", "reversal", "addition")
    assert len(CAPITALS) >= 50
    assert len(CAPITAL_OF) == len(CAPITALS)  # no duplicate countries
    assert all(c.isascii() and k.isascii() for c, k in CAPITALS)
    assert len(NATO_WORDS) == 26 == len(set(NATO_WORDS))
    assert "xray" in NATO_WORDS and "juliett" in NATO_WORDS
    assert [w[0] for w in NATO_WORDS] == list("abcdefghijklmnopqrstuvwxyz")
    assert set(PRETRAIN_WEIGHTS) == set(FAMILIES)
    assert abs(sum(PRETRAIN_WEIGHTS.values()) - 1) < 1e-9


def test_deterministic_per_seed():
    a = sample_problems(200, seed=0)
    assert a == sample_problems(200, seed=0)
    assert a != sample_problems(200, seed=1)
    docs = list(itertools.islice(pretraining_documents(3), 200))
    assert docs == list(itertools.islice(pretraining_documents(3), 200))
    assert docs != list(itertools.islice(pretraining_documents(4), 200))
    assert tokenizer_corpus(100, seed=0) == tokenizer_corpus(100, seed=0)


def test_families_cycled():
    problems = sample_problems(40, seed=0)
    assert [p.family for p in problems] == [FAMILIES[i % 4] for i in range(40)]
    only = sample_problems(10, seed=0, families=("addition",))
    assert {p.family for p in only} == {"addition"}


@pytest.mark.parametrize("split", ["train", "heldout", "any"])
def test_answers_correct(split):
    for p in sample_problems(800, seed=7, split=split):
        assert p.answer == solve(p.family, p.question)
        check_by_hand(p)


def test_sizes_cover_ranges():
    problems = sample_problems(2000, seed=1, split="any")
    sort_lens = {len(p.question.split()) - 1 for p in problems if p.family == "sorting"}
    rev_lens = {len(p.question.split()) - 1 for p in problems if p.family == "reversal"}
    assert sort_lens == set(range(3, 9))
    assert rev_lens == set(range(3, 7))


def test_split_membership():
    for p in sample_problems(400, seed=2, split="train"):
        assert not is_held_out(p)
    for p in sample_problems(400, seed=2, split="heldout"):
        assert is_held_out(p)
    held = {is_held_out(p) for p in sample_problems(2000, seed=2, split="any")}
    assert held == {True, False}


def test_split_is_stable():
    # Pinned values: the split must never change between runs or versions.
    assert len(HELD_OUT_COUNTRIES) == round(0.2 * len(CAPITALS))
    assert sorted(HELD_OUT_COUNTRIES) == [
        "Afghanistan", "Argentina", "Greece", "Laos", "Latvia", "Lithuania",
        "Mexico", "New Zealand", "Saudi Arabia", "Serbia", "Slovakia",
        "South Korea", "Sudan", "Tunisia", "Turkey", "Vietnam",
    ]  # fmt: skip
    held = [b for b in range(100) if is_held_out(Problem("addition", f"What is 0 + {b}?", str(b)))]
    assert held == [2, 4, 7, 28, 30, 33, 59, 65, 74, 77, 96, 98]


def test_addition_held_out_fraction():
    n_held = sum(
        is_held_out(Problem("addition", f"What is {a} + {b}?", str(a + b))) for a in range(100) for b in range(100)
    )
    assert 800 <= n_held <= 1200


def test_held_out_capitals_in_pretraining():
    docs = list(itertools.islice(pretraining_documents(0), 3000))
    for country in HELD_OUT_COUNTRIES:
        capital = CAPITAL_OF[country]
        assert any(country in d and capital in d for d in docs), country
    # ... stated by every template, while chat sampling keeps them in "heldout" only
    rng = random.Random(0)
    for country in HELD_OUT_COUNTRIES:
        p = Problem("capitals", f"What is the capital of {country}?", CAPITAL_OF[country])
        assert is_held_out(p)
        for t in range(len(PLAIN_TEMPLATES["capitals"])):
            text = plain_text(p, rng, t)
            assert country in text and CAPITAL_OF[country] in text
    train_questions = {p.question for p in sample_problems(400, seed=0, families=("capitals",))}
    for country in HELD_OUT_COUNTRIES:
        assert f"What is the capital of {country}?" not in train_questions


def test_pretraining_excludes_held_out():
    problems = list(itertools.islice(pretraining_problems(0), 3000))
    counts = Counter(p.family for p in problems)
    assert set(counts) == set(FAMILIES)
    assert counts["sorting"] > counts["capitals"]
    assert any(p.family == "capitals" and is_held_out(p) for p in problems)
    assert not any(p.family != "capitals" and is_held_out(p) for p in problems)
    # Independently, from the text: no held-out addition question is ever stated.
    for doc in itertools.islice(pretraining_documents(0), 3000):
        for a, b in re.findall(r"(\d+) \+ (\d+)", doc):
            assert not is_held_out(Problem("addition", f"What is {a} + {b}?", str(int(a) + int(b))))


def test_plain_text_contains_chat_form():
    rng = random.Random(0)
    for p in sample_problems(40, seed=3):
        texts = {plain_text(p, rng, t) for t in range(len(PLAIN_TEMPLATES[p.family]))}
        assert any(f"{p.question} {p.answer}" in t or f"{p.question} Answer: {p.answer}" in t for t in texts)
        assert all(p.answer in t for t in texts)
        assert plain_text(p, rng) in texts


def test_chat_messages():
    p = Problem("addition", "What is 1 + 2?", "3")
    assert chat_messages(p) == [
        {"role": "user", "content": "What is 1 + 2?"},
        {"role": "assistant", "content": "3"},
    ]


def test_tokenizer_corpus_covers_world():
    text = "\n".join(tokenizer_corpus(2000))
    for country, capital in CAPITALS:
        assert country in text and capital in text
    for word in NATO_WORDS:
        assert word in text
    for d in "0123456789":
        assert d in text


def test_bad_arguments():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="capitals"):
        sample_problem(rng, "poetry")
    with pytest.raises(ValueError, match="heldout"):
        sample_problem(rng, "sorting", split="test")
    with pytest.raises(ValueError):
        sample_problems(3, seed=0, families=("sorting", "poetry"))
    with pytest.raises(ValueError):
        sample_problems(3, seed=0, split="validation")
    with pytest.raises(ValueError):
        solve("poetry", "What?")
