"""Answering chat questions in batches, and exact-match accuracy on the synthetic task families.

Used by training (periodic evaluation), the tests, the benchmarks and the README's results table.
"""

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Optional

import torch
from tqdm.auto import tqdm

# Sampler settings of the embedded instruct model: its answers are at most 16 tokens, so a 32-slot
# canvas decoded one token per step in one block covers every family.
TINY_SAMPLER_DEFAULTS = dict(gen_length=32, steps=32, block_length=32, temperature=0.0, remasking="low_confidence")


def chat_prompt_batch(tokenizer, questions: Sequence[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (B, L) int64 input ids and attention mask of single-turn chat prompts."""
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in questions
    ]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    length = max(len(i) for i in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (length - len(i)) + i for i in ids], dtype=torch.long, device=device)
    attention_mask = torch.tensor(
        [[0] * (length - len(i)) + [1] * len(i) for i in ids], dtype=torch.long, device=device
    )
    return input_ids, attention_mask


def answer_questions(
    model,
    tokenizer,
    questions: Sequence[str],
    batch_size: int = 64,
    progress: bool = False,
    **generate_kwargs,
) -> list[str]:
    """Answer each question as a single chat turn; returns the decoded answers (special tokens skipped)."""
    from generate import generate

    kwargs = {**TINY_SAMPLER_DEFAULTS, **generate_kwargs}
    answers = []
    starts = range(0, len(questions), batch_size)
    for start in tqdm(starts, desc="answering", disable=not progress):
        prompt, attention_mask = chat_prompt_batch(tokenizer, questions[start : start + batch_size], model.device)
        out = generate(model, prompt, attention_mask, **kwargs)
        answers += tokenizer.batch_decode(out[:, prompt.shape[1] :], skip_special_tokens=True)
    return [a.strip() for a in answers]


def family_accuracy(
    model,
    tokenizer,
    problems: Iterable,
    batch_size: int = 64,
    progress: bool = False,
    **generate_kwargs,
) -> dict[str, float]:
    """Exact-match accuracy per task family (and 'all') of the answers to the problems' questions."""
    problems = list(problems)
    answers = answer_questions(
        model, tokenizer, [p.question for p in problems], batch_size, progress, **generate_kwargs
    )
    correct, total = defaultdict(int), defaultdict(int)
    for problem, answer in zip(problems, answers):
        for key in (problem.family, "all"):
            total[key] += 1
            correct[key] += answer == problem.answer
    return {key: correct[key] / total[key] for key in total}


def format_accuracy_table(results: dict[str, dict[str, float]], families: Optional[Sequence[str]] = None) -> str:
    """Markdown table: one row per setting, one column per family, percentages."""
    families = families or [k for k in next(iter(results.values())) if k != "all"] + ["all"]
    lines = ["| setting | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|"]
    for name, acc in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * acc.get(f, float('nan')):.1f}" for f in families) + " |")
    return "\n".join(lines)
