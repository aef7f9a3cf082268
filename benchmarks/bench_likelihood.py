"""Likelihood estimator speed and multiple-choice decisions, settings side by side in one process.

On the offline 4-way choice task (eval_tasks/data/choice.jsonl, plain-text form, base model) each
setting scores every choice of every question with get_log_likelihood() and picks the best:

- reference: independent noise per choice, LM head on every position, no one-token shortcut
  (what the original estimator does);
- genjo: common random numbers across the choices of a question, LM head only at masked slots,
  exact one-forward path for one-token answers;
- genjo at a quarter of the samples (mc_num / 4).

Prints forwards, seconds per request, accuracy, and agreement of the decisions with the reference.

    python benchmarks/bench_likelihood.py                        # embedded base model, CPU
    python benchmarks/bench_likelihood.py --model <8B-Base> --mc-num 128 --questions 100
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from genjo.loading import DEFAULT_BASE_MODEL, add_model_arguments, load_from_args  # noqa: E402
from get_log_likelihood import get_log_likelihood  # noqa: E402


class CountingModel(torch.nn.Module):
    """Counts sequence forwards; with full_head=True hides the logits_mask shortcut (reference behaviour)."""

    def __init__(self, model, full_head: bool):
        super().__init__()
        self.inner, self.config, self.full_head, self.calls = model, model.config, full_head, 0
        self.supports_logits_mask = not full_head

    @property
    def device(self):
        return self.inner.device

    def forward(self, input_ids, **kwargs):
        self.calls += input_ids.shape[0]  # sequence forwards (Monte-Carlo samples, CFG copies included)
        if self.full_head:
            kwargs.pop("logits_mask", None)
        return self.inner(input_ids, **kwargs)


def score(model, tokenizer, docs, mc_num, batch_size, common_noise: bool, fast: bool) -> dict:
    """Pick the most likely choice of each question; returns decisions, accuracy and cost."""
    counting = CountingModel(model, full_head=not fast)
    decisions, requests = [], 0
    started = time.perf_counter()
    for doc in docs:
        context = torch.tensor(tokenizer(doc["context"], add_special_tokens=False)["input_ids"])
        seed = int(hashlib.sha256(doc["context"].encode()).hexdigest()[:12], 16)
        scores = []
        for j, choice in enumerate(doc["choices"]):
            answer = torch.tensor(tokenizer(" " + choice, add_special_tokens=False)["input_ids"])
            generator = torch.Generator().manual_seed(seed if common_noise else seed + 7919 * (j + 1))
            scores.append(get_log_likelihood(counting, context, answer, mc_num=mc_num, batch_size=batch_size,
                                             generator=generator, exact_single_token=fast))  # fmt: skip
            requests += 1
        decisions.append(max(range(len(scores)), key=scores.__getitem__))
    wall = time.perf_counter() - started
    accuracy = 100 * sum(d == doc["label"] for d, doc in zip(decisions, docs)) / len(docs)
    return dict(decisions=decisions, accuracy=accuracy, forwards=counting.calls, wall=wall, per_request=wall / requests)


def main() -> None:
    parser = add_model_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), DEFAULT_BASE_MODEL)
    parser.add_argument("--mc-num", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--questions", type=int, default=40, help="first N documents of the task (all families)")
    parser.add_argument("--data", default=str(ROOT / "eval_tasks" / "data" / "choice.jsonl"))
    args = parser.parse_args()

    model, tokenizer = load_from_args(args)
    lines = Path(args.data).read_text().splitlines()
    docs = [json.loads(line) for line in lines]
    docs = [docs[i] for i in range(0, len(docs), max(1, len(docs) // args.questions))][: args.questions]
    score(model, tokenizer, docs[:1], 8, 8, True, True)  # warm-up

    quarter = max(1, args.mc_num // 4)
    settings = {
        f"reference, mc_num={args.mc_num}": (args.mc_num, False, False),
        f"genjo, mc_num={args.mc_num}": (args.mc_num, True, True),
        f"genjo, mc_num={quarter}": (quarter, True, True),
        f"reference, mc_num={quarter}": (quarter, False, False),
    }
    rows = {}
    for name, (mc_num, common, fast) in settings.items():
        rows[name] = score(model, tokenizer, docs, mc_num, min(args.batch_size, mc_num), common, fast)
        print(f"  {name}: {rows[name]['wall']:.1f} s", file=sys.stderr)
    reference = next(iter(rows.values()))
    print(f"model {args.model}, {model.dtype}, {model.device}, {torch.get_num_threads()} threads, "
          f"{len(docs)} questions x 4 choices\n")  # fmt: skip
    print("| setting | sequence forwards | s / request | accuracy % | same decision as the first row % | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        same = 100 * sum(a == b for a, b in zip(r["decisions"], reference["decisions"])) / len(docs)
        print(f"| {name} | {r['forwards']} | {r['per_request']:.3f} | {r['accuracy']:.1f} | {same:.1f} | "
              f"{reference['per_request'] / r['per_request']:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
