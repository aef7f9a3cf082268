"""Likelihood estimator speed and multiple-choice decisions, settings side by side in one process.

On the offline 4-way choice task (eval_tasks/data/choice.jsonl, plain-text form, base model) each
setting scores every choice of every question with get_log_likelihood() and picks the best:

- reference: independent noise per choice, LM head on every position, no one-token shortcut
  (what the original estimator does);
- reference again with other noise: how often the estimator at mc_num disagrees with itself;
- genjo: common random numbers across the choices of a question, LM head only at masked slots,
  exact one-forward path for one-token answers, repeated noisy rows run once, the choices of a
  question scored together in shared forwards (get_log_likelihoods);
- genjo and reference at a quarter of the samples (mc_num / 4).

Prints forwards, seconds per request, accuracy, and agreement of the decisions with the reference
and with genjo at mc_num. Then the variance reduction of common random numbers: each question is
scored --repeats times with fresh noise, with one noise for all its choices (genjo) and with
independent noise per choice, and the variance of score(right choice) - score(wrong choice) over
the repeats is compared, per family.

    python benchmarks/bench_likelihood.py                        # embedded base model, CPU
    python benchmarks/bench_likelihood.py --model <8B-Base> --mc-num 128 --questions 100
"""

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from genjo.cli import run_command
from genjo.likelihood import get_log_likelihoods
from genjo.loading import DEFAULT_BASE_MODEL, add_model_arguments, load_from_args

ROOT = Path(__file__).resolve().parent.parent  # the clone: eval_tasks/ holds the choice task's data


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


def score_question(model, tokenizer, doc, mc_num, batch_size, noise_seed: int, common_noise: bool, fast: bool):
    """Scores of the choices of one question, forwards spent, and wall seconds.

    fast: LM head at masked slots only, one forward for one-token answers, repeated noisy rows run
    once, and the choices of a question in shared forwards; otherwise every choice is scored alone,
    every row run, with the full head.
    """
    counting = CountingModel(model, full_head=not fast)
    started = time.perf_counter()
    context = torch.tensor(tokenizer(doc["context"], add_special_tokens=False)["input_ids"])
    seed = int(hashlib.sha256(doc["context"].encode()).hexdigest()[:12], 16) + noise_seed
    pairs = [(context, torch.tensor(tokenizer(" " + c, add_special_tokens=False)["input_ids"])) for c in doc["choices"]]
    generators = [torch.Generator().manual_seed(seed if common_noise else seed + 7919 * (j + 1))
                  for j in range(len(pairs))]  # fmt: skip
    kwargs = dict(mc_num=mc_num, batch_size=batch_size, exact_single_token=fast, deduplicate=fast)
    if fast:
        scores = get_log_likelihoods(counting, pairs, generators=generators, **kwargs)
    else:
        scores = [
            get_log_likelihoods(counting, [pair], generators=[g], **kwargs)[0] for pair, g in zip(pairs, generators)
        ]
    return scores, counting.calls, time.perf_counter() - started


def main() -> None:
    parser = add_model_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), DEFAULT_BASE_MODEL)
    parser.add_argument("--mc-num", type=int, default=128,
                        help="Monte-Carlo samples per choice at full budget (default: %(default)s)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32,
                        help="masked rows per forward (default: %(default)s)")  # fmt: skip
    parser.add_argument("--questions", type=int, default=40,
                        help="questions, spread evenly over the task file (all families) "
                             "(default: %(default)s)")  # fmt: skip
    parser.add_argument("--data", default=str(ROOT / "eval_tasks" / "data" / "choice.jsonl"),
                        help="JSON-lines 4-way choice task (default: the offline genjo_tiny_choice data)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=8,
                        help="noise draws per question for the variance table (default: %(default)s)")  # fmt: skip
    parser.add_argument("--variance-questions", type=int, default=16,
                        help="first N questions for the variance table (default: %(default)s)")  # fmt: skip
    args = parser.parse_args()

    model, tokenizer = load_from_args(args)
    lines = Path(args.data).read_text().splitlines()
    docs = [json.loads(line) for line in lines]
    docs = [docs[i] for i in range(0, len(docs), max(1, len(docs) // args.questions))][: args.questions]
    score_question(model, tokenizer, docs[0], 8, 8, 0, True, True)  # warm-up

    quarter = max(1, args.mc_num // 4)
    settings = {  # name -> (mc_num, noise seed, common random numbers, fast path)
        f"reference, mc_num={args.mc_num}": (args.mc_num, 0, False, False),
        f"reference, mc_num={args.mc_num}, other noise": (args.mc_num, 1, False, False),
        f"genjo, mc_num={args.mc_num}": (args.mc_num, 0, True, True),
        f"genjo, mc_num={quarter}": (quarter, 0, True, True),
        f"reference, mc_num={quarter}": (quarter, 0, False, False),
    }
    # Settings take turns question by question, so a slow spell of a shared machine hits them alike.
    rows = {name: dict(decisions=[], forwards=0, wall=0.0) for name in settings}
    for doc in tqdm(docs, desc="questions", file=sys.stderr):
        for name, (mc_num, noise_seed, common, fast) in settings.items():
            scores, forwards, wall = score_question(
                model, tokenizer, doc, mc_num, min(args.batch_size, mc_num), noise_seed, common, fast
            )
            rows[name]["decisions"].append(max(range(len(scores)), key=scores.__getitem__))
            rows[name]["forwards"] += forwards
            rows[name]["wall"] += wall
    requests = sum(len(doc["choices"]) for doc in docs)
    for r in rows.values():
        r["per_request"] = r["wall"] / requests
        r["accuracy"] = 100 * sum(d == doc["label"] for d, doc in zip(r["decisions"], docs)) / len(docs)
    names = list(rows)
    reference, genjo = rows[names[0]], rows[names[2]]
    print(f"model {args.model}, {model.dtype}, {model.device}, {torch.get_num_threads()} threads, "
          f"{len(docs)} questions x 4 choices\n")  # fmt: skip
    print("| setting | sequence forwards | s / request | accuracy % | same decision as reference % | "
          "same decision as genjo % | speed-up |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")

    def agreement(r, base):
        return 100 * sum(a == b for a, b in zip(r["decisions"], base["decisions"])) / len(docs)

    for name, r in rows.items():
        print(f"| {name} | {r['forwards']} | {r['per_request']:.3f} | {r['accuracy']:.1f} | "
              f"{agreement(r, reference):.1f} | {agreement(r, genjo):.1f} | "
              f"{reference['per_request'] / r['per_request']:.1f}x |")  # fmt: skip
    if args.repeats >= 2:
        print_variance_reduction(model, tokenizer, docs[: args.variance_questions], args)


def print_variance_reduction(model, tokenizer, docs, args) -> None:
    """Variance of the right-minus-wrong score difference, common vs independent noise, per family."""
    variances = {}  # (family, common noise) -> per (question, wrong choice) variance over the repeats
    for doc in tqdm(docs, desc="variance", file=sys.stderr):
        for common in (True, False):
            differences = []  # (repeats, wrong choices)
            for repeat in range(args.repeats):
                scores, _, _ = score_question(
                    model, tokenizer, doc, args.mc_num, args.batch_size, 1000 * (repeat + 1), common, True
                )
                right = scores[doc["label"]]
                differences.append([right - s for j, s in enumerate(scores) if j != doc["label"]])
            per_choice = torch.tensor(differences, dtype=torch.float64).var(dim=0)  # (wrong choices,)
            variances.setdefault((doc["family"], common), []).extend(per_choice.tolist())
    families = sorted({family for family, _ in variances})
    print(f"\nVariance of score(right) - score(wrong) over {args.repeats} noise draws, mc_num={args.mc_num}, "
          f"{len(docs)} questions, nats^2\n")  # fmt: skip
    print("| family | independent noise | common random numbers | reduction |")
    print("|---|---|---|---|")
    for family in families + ["all"]:
        keys = families if family == "all" else [family]
        independent = statistics.mean(v for f in keys for v in variances[(f, False)])
        common = statistics.mean(v for f in keys for v in variances[(f, True)])
        reduction = f"{independent / common:.1f}x" if common > 0 else "exact (one-token answers)"
        print(f"| {family} | {independent:.3f} | {common:.3f} | {reduction} |")


if __name__ == "__main__":
    run_command(main)
