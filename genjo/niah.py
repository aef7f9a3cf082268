"""Needle in a haystack for diffusion models: retrieve one fact planted at a chosen depth of a long filler text.

A prompt of ``length`` tokens is filler text (sentences of the tiny world: plain facts, deterministic, offline)
with one needle sentence, "The magic number of <name> is <number>.", at ``depth`` (0: the start, 1: the end of
the filler), followed by the question "What is the magic number of <name>?". The prompt is a single chat
turn (``genjo.chat_format``) answered by ``generate()``; an answer is right when it holds the number. Accuracy
over a grid of lengths x depths is saved as JSON (``run_grid``) and drawn as a heat map (``plot_heatmap``).

Beyond the trained length, run the model with a scaled RoPE base (``load_model(..., context_length=N)``;
``eval_niah.py --context-length N``): LongLLaDA (arXiv 2506.14429) reports that without it a diffusion model
retrieves only from the nearby part of the context ("local perception").
"""

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from tqdm.auto import tqdm

from . import tinyworld
from .chat_format import user_turn_ids
from .evaluation import answer_questions

NEEDLE = "The magic number of {name} is {number}."
QUESTION = "What is the magic number of {name}?"
# Names of the needles: NATO words the tiny world's tokenizer knows, two at a time ("alpha bravo").
NAMES = tinyworld.NATO_WORDS


@dataclass(frozen=True)
class Needle:
    """One test: the prompt's parts and the expected answer."""

    length: int  # target prompt tokens (the chat template included)
    depth: float  # where the needle sits in the filler: 0.0 start .. 1.0 end
    name: str
    number: str
    text: str  # the user message: filler with the needle, then the question

    @property
    def answer(self) -> str:
        return self.number

    @property
    def question(self) -> str:
        """The user message (so that a Needle trains like a tiny-world problem: ``genjo.train.data.sft_example``)."""
        return self.text


def filler_sentences(seed: int):
    """Endless plain sentences of the tiny world (facts of its four task families)."""
    return tinyworld.pretraining_documents(seed, split="any")


def make_needle(tokenizer, length: int, depth: float, seed: int, digits: int = 4) -> Needle:
    """A haystack of about ``length`` prompt tokens with the needle at ``depth``.

    Filler sentences are added while the chat prompt (filler, needle, question) stays within ``length`` tokens
    (it may end a few tokens short: whole sentences only, never over); the needle goes between two sentences, at the
    sentence boundary nearest to ``depth`` of the filler's tokens.
    """
    rng = random.Random(f"niah:{seed}:{length}:{depth}")
    name = " ".join(rng.sample(NAMES, 2))
    number = str(rng.randrange(10 ** (digits - 1), 10**digits))
    needle, question = NEEDLE.format(name=name, number=number), QUESTION.format(name=name)
    overhead = len(user_turn_ids(tokenizer, f"{needle} {question}"))
    budget = length - overhead
    sentences, sizes = [], []
    for sentence in filler_sentences(rng.getrandbits(63)):
        size = len(tokenizer(" " + sentence, add_special_tokens=False)["input_ids"])
        if sum(sizes) + size > budget:
            break
        sentences.append(sentence)
        sizes.append(size)
    while True:
        total, boundary, position = sum(sizes), 0, 0
        for i in range(len(sizes) + 1):  # the boundary whose token offset is nearest to depth x filler tokens
            if abs(sum(sizes[:i]) - depth * total) < abs(position - depth * total):
                boundary, position = i, sum(sizes[:i])
        parts = sentences[:boundary] + [needle] + sentences[boundary:]
        text = " ".join(parts) + "\n\n" + question
        # Sentences counted alone can merge differently in the text (the first has no leading space): never
        # exceed the length, drop the last filler sentence until the prompt fits.
        if not sentences or len(user_turn_ids(tokenizer, text)) <= length:
            break
        sentences, sizes = sentences[:-1], sizes[:-1]
    return Needle(length, depth, name, number, text)


def training_needles(
    tokenizer, n: int, seed: int, min_length: int, max_length: int, digits: int = 4, progress: bool = False
) -> list[Needle]:
    """n needles for training: lengths uniform in min_length..max_length prompt tokens, depths uniform in 0..1.

    Their haystacks never coincide with those of ``run_grid`` (which uses seeds >= 0): training needles take
    make_needle seeds below 0. A needle's name and number are drawn afresh, so a model that answers held-out
    needles retrieves the number from the text (1 in 9000 by chance for 4 digits).
    """
    if not 64 <= min_length <= max_length:
        raise ValueError(f"need 64 <= min_length <= max_length (prompt tokens); got {min_length}, {max_length}.")
    rng = random.Random(f"niah-train:{seed}")
    needles = []
    for k in tqdm(range(n), desc="training needles", disable=not progress):
        length, depth = rng.randint(min_length, max_length), rng.random()
        needles.append(make_needle(tokenizer, length, depth, -1 - seed * 10_000_019 - k, digits))
    return needles


def check_grid(model, lengths: Sequence[int], depths: Sequence[float], gen_length: int) -> None:
    """ValueError for a grid the model cannot run (before any generation)."""
    if not lengths or not depths:
        raise ValueError("Give at least one length and one depth (e.g. --lengths 512,1024 --depths 0,0.5,1).")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths must lie in 0..1 (0: the needle first, 1: last); got {list(depths)}.")
    if any(n < 64 for n in lengths):
        raise ValueError(f"lengths must be at least 64 tokens (the needle and the question); got {list(lengths)}.")
    limit = getattr(model.config, "max_sequence_length", None)
    if limit is not None and max(lengths) + gen_length > limit:
        raise ValueError(f"the longest haystack ({max(lengths)}) + gen_length ({gen_length}) exceeds the model's "
                         f"max_sequence_length ({limit}); pass --context-length {max(lengths) + gen_length} (or more) "
                         "to scale the RoPE base, or shorter --lengths.")  # fmt: skip


def run_grid(
    model,
    tokenizer,
    lengths: Sequence[int],
    depths: Sequence[float],
    samples: int = 4,
    seed: int = 0,
    batch_size: int = 4,
    digits: int = 4,
    progress: bool = True,
    **generate_kwargs,
) -> dict:
    """Accuracy of the needle's retrieval for each (length, depth): ``samples`` needles per cell.

    generate_kwargs: ``generate()`` keywords (the checkpoint's settings for those left out); gen_length
    defaults to 32. Returns a JSON-able dict: the model's context setup (max_sequence_length, rope_theta, RoPE
    base, rope_extension), the settings, and one record per cell with its accuracy and every answer.
    """
    generate_kwargs.setdefault("gen_length", 32)
    generate_kwargs.setdefault("block_length", generate_kwargs["gen_length"])
    generate_kwargs.setdefault("steps", generate_kwargs["gen_length"])
    check_grid(model, lengths, depths, generate_kwargs["gen_length"])
    cells = []
    grid = [(n, d) for n in lengths for d in depths]
    for length, depth in tqdm(grid, desc="needle in a haystack", disable=not progress):
        needles = [make_needle(tokenizer, length, depth, seed * 100_003 + k, digits) for k in range(samples)]
        answers = answer_questions(model, tokenizer, [x.text for x in needles], batch_size, **generate_kwargs)
        correct = [x.answer in a for x, a in zip(needles, answers)]
        cells.append(dict(length=length, depth=depth, accuracy=sum(correct) / len(correct), n=len(correct),
                          answers=[dict(name=x.name, expected=x.answer, answer=a, correct=c)
                                   for x, a, c in zip(needles, answers, correct)]))  # fmt: skip
    config = model.config
    return dict(
        max_sequence_length=config.max_sequence_length,
        rope_theta=config.rope_theta,
        rope_base=getattr(config, "rope_base", config.rope_theta),
        rope_extension=getattr(config, "rope_extension", None),
        settings={k: v for k, v in generate_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))},
        lengths=list(lengths),
        depths=list(depths),
        samples=samples,
        seed=seed,
        cells=cells,
    )


def accuracy_table(results: dict) -> str:
    """A markdown table: one row per depth, one column per length, accuracy in %."""
    lengths, depths = results["lengths"], results["depths"]
    by_cell = {(c["length"], c["depth"]): c["accuracy"] for c in results["cells"]}
    lines = ["| depth \\ length | " + " | ".join(str(n) for n in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for d in depths:
        lines.append(f"| {d:g} | " + " | ".join(f"{100 * by_cell[n, d]:.0f}" for n in lengths) + " |")
    mean = sum(by_cell.values()) / len(by_cell)
    return "\n".join(lines) + f"\n\nmean accuracy {100 * mean:.1f}%"


def plot_heatmap(results: dict, path: str, title: Optional[str] = None) -> None:
    """The accuracy grid as a heat map (depth down, length across, green = retrieved) in a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, depths = results["lengths"], results["depths"]
    by_cell = {(c["length"], c["depth"]): c["accuracy"] for c in results["cells"]}
    grid = [[by_cell[n, d] for n in lengths] for d in depths]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.5 * len(depths)))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title(title or f"needle in a haystack (RoPE base {results['rope_base']:g})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_results(results: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")


__all__ = ["Needle", "accuracy_table", "make_needle", "plot_heatmap", "run_grid", "save_results", "training_needles"]
