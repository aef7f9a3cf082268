"""A tiny, seeded synthetic "task world" for training the embedded Genjo model.

The world has four task families. Each problem is a (question, answer) pair that
is used in two forms:

- chat form (supervised fine-tuning, evaluation): a user message holding the
  question and an assistant message holding the answer, see `chat_messages`;
- plain-text form (pre-training): one English sentence stating the same fact,
  see `plain_text` and `pretraining_documents`.

Families (question -> answer):

    capitals   What is the capital of France?    -> Paris
    sorting    Sort: 3 1 2                       -> 1 2 3
    reversal   Reverse: alpha bravo charlie      -> charlie bravo alpha
    addition   What is 12 + 30?                  -> 42

Train / held-out split (`is_held_out`). The split is a pure function of the
problem text (via SHA-256, never Python's salted `hash()`), so it never changes
between runs or machines:

- sorting, reversal, addition: about 10% of the distinct questions are held out.
  Held-out questions never appear in training data of any form.
- capitals: a fixed 20% subset of the countries is held out from the *chat form
  only*. Their facts still appear in the pre-training text, so a held-out
  capital question measures whether the instruct model transfers knowledge
  from pre-training to the chat format.

Everything is deterministic given a seed; each sampler takes its own
`random.Random` so nothing depends on global random state.
"""

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

FAMILIES = ("capitals", "sorting", "reversal", "addition")
SPLITS = ("train", "heldout", "any")

# (country, capital); plain ASCII, no countries that need a leading "the".
CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"),
    ("Belgium", "Brussels"),
    ("Switzerland", "Bern"),
    ("Austria", "Vienna"),
    ("Poland", "Warsaw"),
    ("Hungary", "Budapest"),
    ("Greece", "Athens"),
    ("Sweden", "Stockholm"),
    ("Norway", "Oslo"),
    ("Denmark", "Copenhagen"),
    ("Finland", "Helsinki"),
    ("Iceland", "Reykjavik"),
    ("Estonia", "Tallinn"),
    ("Latvia", "Riga"),
    ("Lithuania", "Vilnius"),
    ("Slovakia", "Bratislava"),
    ("Slovenia", "Ljubljana"),
    ("Croatia", "Zagreb"),
    ("Serbia", "Belgrade"),
    ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"),
    ("Russia", "Moscow"),
    ("Ukraine", "Kyiv"),
    ("Turkey", "Ankara"),
    ("Egypt", "Cairo"),
    ("Morocco", "Rabat"),
    ("Algeria", "Algiers"),
    ("Tunisia", "Tunis"),
    ("Libya", "Tripoli"),
    ("Sudan", "Khartoum"),
    ("Ethiopia", "Addis Ababa"),
    ("Kenya", "Nairobi"),
    ("Uganda", "Kampala"),
    ("Tanzania", "Dodoma"),
    ("Nigeria", "Abuja"),
    ("Ghana", "Accra"),
    ("Senegal", "Dakar"),
    ("Zimbabwe", "Harare"),
    ("South Africa", "Pretoria"),
    ("Saudi Arabia", "Riyadh"),
    ("Qatar", "Doha"),
    ("Jordan", "Amman"),
    ("Lebanon", "Beirut"),
    ("Syria", "Damascus"),
    ("Iraq", "Baghdad"),
    ("Iran", "Tehran"),
    ("Afghanistan", "Kabul"),
    ("Pakistan", "Islamabad"),
    ("India", "New Delhi"),
    ("Nepal", "Kathmandu"),
    ("Bangladesh", "Dhaka"),
    ("China", "Beijing"),
    ("Mongolia", "Ulaanbaatar"),
    ("Japan", "Tokyo"),
    ("South Korea", "Seoul"),
    ("Vietnam", "Hanoi"),
    ("Laos", "Vientiane"),
    ("Cambodia", "Phnom Penh"),
    ("Thailand", "Bangkok"),
    ("Malaysia", "Kuala Lumpur"),
    ("Indonesia", "Jakarta"),
    ("Australia", "Canberra"),
    ("New Zealand", "Wellington"),
    ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"),
    ("Cuba", "Havana"),
    ("Jamaica", "Kingston"),
    ("Colombia", "Bogota"),
    ("Venezuela", "Caracas"),
    ("Ecuador", "Quito"),
    ("Peru", "Lima"),
    ("Brazil", "Brasilia"),
    ("Paraguay", "Asuncion"),
    ("Uruguay", "Montevideo"),
    ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"),
)

NATO_WORDS: tuple[str, ...] = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliett", "kilo", "lima", "mike", "november", "oscar", "papa",
    "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray",
    "yankee", "zulu",
)  # fmt: skip

# Problem sizes (inclusive ranges).
SORT_LEN = (3, 8)  # number of digits to sort, digits 0-9 with repeats
REVERSE_LEN = (3, 6)  # number of NATO words to reverse, repeats allowed
ADD_MAX = 99  # addends uniform in 0..ADD_MAX

# Held-out fractions (see module docstring).
HELD_OUT_FRACTION = 0.10  # sorting / reversal / addition, per distinct question
HELD_OUT_CAPITALS_FRACTION = 0.20  # capitals, per country, chat form only

# Family mix of the pre-training stream (sampled i.i.d. with these weights).
# Capitals get the smallest share since there are only a few dozen facts.
PRETRAIN_WEIGHTS = {
    "capitals": 0.15,
    "sorting": 0.30,
    "reversal": 0.25,
    "addition": 0.30,
}

# The sampler settings of the tiny world's instruct models: what the training recipe (genjo.train) writes into
# a tiny-world SFT checkpoint's config.json ``sampler_defaults``, and what training's held-out evaluation
# answers with. Every answer is at most 16 tokens, so a 32-slot canvas decoded one token per step in one
# block covers every family.
SAMPLER_DEFAULTS = dict(gen_length=32, steps=32, block_length=32, temperature=0.0, remasking="low_confidence")

_CAPITAL_OF = dict(CAPITALS)

# Plain-text templates per family. Fields: {q} the chat question, {x} the input
# (country, digit list, word list or "a + b") and {y} the answer. Every family
# has at least one template with the exact chat question followed by the answer.
PLAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "capitals": (
        "The capital of {x} is {y}.",
        "{y} is the capital of {x}.",
        "Question: {q} Answer: {y}.",
        "{q} {y}.",
    ),
    "sorting": (
        "Sort {x} and you get {y}.",
        "Sorted in ascending order, {x} becomes {y}.",
        "Question: {q} Answer: {y}.",
        "{q} gives {y}.",
    ),
    "reversal": (
        "Reversed, {x} is {y}.",
        "Reverse {x} and you get {y}.",
        "Question: {q} Answer: {y}.",
        "{q} gives {y}.",
    ),
    "addition": (
        "{x} = {y}.",
        "{q} {y}.",
        "Question: {q} Answer: {y}.",
        "The sum {x} equals {y}.",
    ),
}


@dataclass(frozen=True)
class Problem:
    """One task instance: its family, the chat question and the correct answer."""

    family: str
    question: str
    answer: str


# -----------------------------------------------------------------------------
# validation, hashing and the held-out split


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; allowed: {', '.join(FAMILIES)}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")


def _unit_hash(text: str) -> float:
    """A stable pseudo-random number in [0, 1) derived from `text` (SHA-256)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _held_out_countries() -> frozenset[str]:
    """The fixed set of countries whose capital questions are held out of chat data.

    Countries are ranked by a SHA-256 hash of their name and the first 20% are
    held out, so the fraction is exact and the choice never changes.
    """
    ranked = sorted(_CAPITAL_OF, key=lambda country: (_unit_hash("capital:" + country), country))
    k = round(HELD_OUT_CAPITALS_FRACTION * len(ranked))
    return frozenset(ranked[:k])


HELD_OUT_COUNTRIES = _held_out_countries()


def is_held_out(problem: Problem) -> bool:
    """Whether `problem` belongs to the held-out split (deterministic across runs).

    sorting / reversal / addition: held out iff a SHA-256 hash of the question
    text falls in the lowest 10%, which holds out ~10% of distinct questions.
    capitals: held out iff the country is in `HELD_OUT_COUNTRIES` (20% of the
    table). This only removes the question from chat / SFT data; the fact is
    still stated in the pre-training text.
    """
    _check_family(problem.family)
    if problem.family == "capitals":
        return _parse(problem.family, problem.question) in HELD_OUT_COUNTRIES
    return _unit_hash(problem.family + ":" + problem.question) < HELD_OUT_FRACTION


# -----------------------------------------------------------------------------
# parsing and solving questions


def _parse(family: str, question: str) -> str:
    """Extract the input part of a question: the country, digits, words or `a + b`."""
    prefix, suffix = {
        "capitals": ("What is the capital of ", "?"),
        "sorting": ("Sort: ", ""),
        "reversal": ("Reverse: ", ""),
        "addition": ("What is ", "?"),
    }[family]
    if not (question.startswith(prefix) and question.endswith(suffix)):
        raise ValueError(f"not a {family} question: {question!r}")
    return question[len(prefix) : len(question) - len(suffix)]


def solve(family: str, question: str) -> str:
    """Recompute the correct answer to `question` from its text alone."""
    _check_family(family)
    x = _parse(family, question)
    if family == "capitals":
        return _CAPITAL_OF[x]
    if family == "sorting":
        return " ".join(sorted(x.split(), key=int))
    if family == "reversal":
        return " ".join(reversed(x.split()))
    a, b = x.split(" + ")
    return str(int(a) + int(b))


# -----------------------------------------------------------------------------
# sampling


def _make(family: str, x: str) -> Problem:
    """Build a Problem from its input part (see `_parse`)."""
    question = {
        "capitals": "What is the capital of {}?",
        "sorting": "Sort: {}",
        "reversal": "Reverse: {}",
        "addition": "What is {}?",
    }[family].format(x)
    return Problem(family, question, solve(family, question))


def _sample_any(rng: random.Random, family: str) -> Problem:
    """Sample a problem of `family` ignoring the split."""
    if family == "capitals":
        country, _ = rng.choice(CAPITALS)
        return _make(family, country)
    if family == "sorting":
        n = rng.randint(*SORT_LEN)
        return _make(family, " ".join(str(rng.randint(0, 9)) for _ in range(n)))
    if family == "reversal":
        n = rng.randint(*REVERSE_LEN)
        return _make(family, " ".join(rng.choice(NATO_WORDS) for _ in range(n)))
    a, b = rng.randint(0, ADD_MAX), rng.randint(0, ADD_MAX)
    return _make(family, f"{a} + {b}")


def sample_problem(rng: random.Random, family: str, split: str = "train") -> Problem:
    """Sample one problem of `family` from `split` ("train", "heldout" or "any").

    "train" yields only non-held-out problems, "heldout" only held-out ones
    (both by rejection sampling, or directly from the country list for capitals).
    """
    _check_family(family)
    _check_split(split)
    if family == "capitals" and split != "any":
        countries = [c for c, _ in CAPITALS if (c in HELD_OUT_COUNTRIES) == (split == "heldout")]
        return _make(family, rng.choice(countries))
    while True:
        problem = _sample_any(rng, family)
        if split == "any" or is_held_out(problem) == (split == "heldout"):
            return problem


def sample_problems(n: int, seed: int, families: Sequence[str] = FAMILIES, split: str = "train") -> list[Problem]:
    """Sample `n` problems deterministically from `seed`.

    Families are cycled in order (problem i has family `families[i % len(families)]`),
    so every family gets an equal share (up to one).
    """
    for family in families:
        _check_family(family)
    _check_split(split)
    rng = random.Random(seed)
    return [sample_problem(rng, families[i % len(families)], split) for i in range(n)]


# -----------------------------------------------------------------------------
# rendering: chat form and pre-training text


def chat_messages(problem: Problem) -> list[dict]:
    """The problem as a chat: one user turn (question) and one assistant turn (answer)."""
    return [
        {"role": "user", "content": problem.question},
        {"role": "assistant", "content": problem.answer},
    ]


def plain_text(problem: Problem, rng: random.Random, template: int | None = None) -> str:
    """One plain-English sentence stating the problem and its answer.

    The template is drawn from `PLAIN_TEMPLATES[problem.family]` with `rng`
    unless `template` (an index) is given.
    """
    templates = PLAIN_TEMPLATES[problem.family]
    if template is None:
        template = rng.randrange(len(templates))
    x = _parse(problem.family, problem.question)
    return templates[template].format(q=problem.question, x=x, y=problem.answer)


def pretraining_problems(seed: int, split: str = "train") -> Iterator[Problem]:
    """Infinite deterministic stream of the problems behind `pretraining_documents`.

    Families are drawn i.i.d. with `PRETRAIN_WEIGHTS`. With split "train",
    capitals use ALL countries (the held-out split applies to chat form only)
    while the other families use only non-held-out problems. Other splits are
    passed through to `sample_problem` unchanged.
    """
    _check_split(split)
    rng = random.Random(seed)
    weights = [PRETRAIN_WEIGHTS[f] for f in FAMILIES]
    while True:
        (family,) = rng.choices(FAMILIES, weights=weights)
        family_split = "any" if family == "capitals" and split == "train" else split
        yield sample_problem(rng, family, family_split)


def pretraining_documents(seed: int, split: str = "train") -> Iterator[str]:
    """Infinite deterministic stream of plain-text pre-training sentences.

    See `pretraining_problems` for the family mix and the split rules.
    """
    rng = random.Random(f"plain-text:{seed}")  # separate stream for template choice
    for problem in pretraining_problems(seed, split):
        yield plain_text(problem, rng)


def tokenizer_corpus(n: int = 20000, seed: int = 0) -> list[str]:
    """Texts covering every word and character of the world, for tokenizer training.

    Contains every country with every capitals template (plain and chat form),
    the NATO words, the digits, every template of every other family, `n`
    pre-training documents (any split: the tokenizer learns no answers) and,
    for every 4th of those, its chat turns as "user\n\n{question}" and
    "assistant\n\n{answer}" (the role names of the chat template). Deterministic
    per seed.
    """
    rng = random.Random(seed)
    texts = []
    for country, _ in CAPITALS:
        problem = _make("capitals", country)
        texts += [plain_text(problem, rng, t) for t in range(len(PLAIN_TEMPLATES["capitals"]))]
        texts += [problem.question, problem.answer]
    texts.append(" ".join(NATO_WORDS))
    texts.append(" ".join("0123456789"))
    for family in FAMILIES[1:]:
        problem = sample_problem(rng, family, "any")
        texts += [plain_text(problem, rng, t) for t in range(len(PLAIN_TEMPLATES[family]))]
    for i, problem in enumerate(pretraining_problems(seed, split="any")):
        if i >= n:
            break
        texts.append(plain_text(problem, rng))
        if i % 4 == 0:  # also the chat turns, as "{role}\n\n{content}" minus special tokens
            texts += [f"user\n\n{problem.question}", f"assistant\n\n{problem.answer}"]
    return texts
