"""The variance analysis of VRPO (LLaDA 1.5, arXiv 2505.19223) on a Genjo model: the same pairs, fresh noise.

The preference score of a pair, (B_pol(y_w) - B_ref(y_w)) - (B_pol(y_l) - B_ref(y_l)), is estimated again
and again with fresh noise under four settings of the ELBO estimates (genjo/train/preference.py):

    (a) n = 1                      1 time x 1 mask, the reference with noise of its own
    (b) n = 8, 1 time x 8 masks    the reference with noise of its own
    (c) n = 8, 8 times x 1 mask    (optimal allocation) the reference with noise of its own
    (d) (c) + antithetic           the reference shares the policy's times and masks

and the table gives, per setting, the variance of the score estimate (mean over pairs of its variance over
the draws) and the variance of the norm of the VRPO loss's gradient over the same pairs (one backward per
draw). Theory: (a) > (b) > (c) > (d) for the score; the gradient's variance follows the score's
through the loss's sigmoid weights and the policy's own estimates (the reference has no gradient).

The policy must be a little way from the reference (at the reference itself, (d) is exactly 0): it is the
reference after --policy-steps VRPO steps (optimal, antithetic) on the benchmark's own pairs, lr --policy-lr.
Pairs: tiny-world questions (chat form), chosen = the correct answer, rejected = the answer to another question
of the same family.

    python benchmarks/bench_vrpo_variance.py                         # embedded instruct model, CPU
    python benchmarks/bench_vrpo_variance.py --plot imgs/vrpo_variance.png
"""

import argparse
import copy
import random
import time

import torch
from tqdm import tqdm

from genjo import tinyworld
from genjo.cli import run_command
from genjo.loading import add_model_arguments, load_from_args
from genjo.train.data import preference_rows, sft_example
from genjo.train.preference import draw_preference_noise, pair_scores, reference_pair_elbos, vrpo_loss

SETTINGS = {  # name: (budget, allocation, antithetic)
    "(a) n=1": (1, "optimal", False),
    "(b) n=8, 1 time x 8 masks": (8, "naive", False),
    "(c) n=8, 8 times x 1 mask": (8, "optimal", False),
    "(d) (c) + antithetic": (8, "optimal", True),
}


def benchmark_pairs(tokenizer, n: int, seed: int) -> tuple:
    """preference_rows of n tiny-world pairs: chosen the right answer, rejected another question's answer."""
    rng = random.Random(seed)
    triples = []
    for i in range(n):
        family = ("sorting", "reversal", "addition")[i % 3]
        problem, other = (tinyworld.sample_problem(rng, family, "heldout") for _ in range(2))
        prompt, chosen = sft_example(tokenizer, problem)
        _, rejected = sft_example(tokenizer, tinyworld.Problem(family, problem.question, other.answer))
        triples.append((prompt, chosen, rejected))
    return preference_rows(triples, tokenizer.eos_token_id)


def draw(batch, setting, seed: int):
    budget, allocation, antithetic = setting
    chosen, rejected, prompt_lengths, lengths = batch
    generator = torch.Generator().manual_seed(seed)
    return draw_preference_noise(chosen, rejected, prompt_lengths, lengths, budget, allocation, antithetic, 1e-3,
                                 generator)  # fmt: skip


def policy_near(reference, batch, steps: int, lr: float, beta: float, mask_id: int):
    """A copy of the reference moved by `steps` VRPO steps (optimal, antithetic, n = 8) on the batch."""
    policy = copy.deepcopy(reference).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    chosen, rejected, _, lengths = batch
    for step in range(steps):
        noise = draw(batch, SETTINGS["(d) (c) + antithetic"], 10_000 + step)
        loss = vrpo_loss(pair_scores(policy, reference, chosen, rejected, lengths, noise, mask_id), beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy


def measure(policy, reference, batch, name: str, draws: int, grad_draws: int, beta: float, mask_id: int) -> dict:
    """Variance over fresh noise of each pair's score (mean over pairs), and of the loss gradient's norm."""
    chosen, rejected, _, lengths = batch
    scores, norms = [], []
    start = time.perf_counter()
    for d in tqdm(range(draws), desc=name, leave=False):
        noise = draw(batch, SETTINGS[name], d)
        want_grad = d < grad_draws
        policy.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(want_grad):
            reference_elbo = reference_pair_elbos(reference, chosen, rejected, lengths, noise, mask_id)
            score = pair_scores(policy, None, chosen, rejected, lengths, noise, mask_id, reference_elbo)
        if want_grad:
            vrpo_loss(score, beta).backward()
            norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in policy.parameters()]))))
        scores.append(score.detach())
    scores = torch.stack(scores).double()  # (draws, P)
    norms = torch.tensor(norms, dtype=torch.float64)
    return {"score_var": float(scores.var(0).mean()), "score_mean": float(scores.mean()),
            "grad_norm_var": float(norms.var()), "grad_norm_mean": float(norms.mean()),
            "seconds": time.perf_counter() - start}  # fmt: skip


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    titles = ("variance of the preference score", "variance of the loss gradient's norm")
    for ax, key, title in zip(axes, ("score_var", "grad_norm_var"), titles):
        values = [results[n][key] for n in names]
        ax.bar(range(len(names)), values, color=["#bbbbbb", "#88aadd", "#4477bb", "#225588"])
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)), [n.split(" ", 1)[0] for n in names])
        ax.set_title(title, fontsize=10)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.2g}", ha="center", va="bottom", fontsize=8)
    fig.suptitle("VRPO variance reduction (a) n=1, (b) 1x8, (c) 8x1, (d) 8x1 + antithetic", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--pairs", type=int, default=12, help="preference pairs (default: %(default)s)")
    parser.add_argument("--draws", type=int, default=64, help="fresh noise draws per setting (default: %(default)s)")
    parser.add_argument("--grad-draws", type=int, default=32,
                        help="draws with a backward pass for the gradient norm (default: %(default)s)")  # fmt: skip
    parser.add_argument("--beta", type=float, default=0.1, help="VRPO beta (default: %(default)s)")
    parser.add_argument("--policy-steps", type=int, default=5, help="VRPO steps from the reference (default: 5)")
    parser.add_argument("--policy-lr", type=float, default=1e-4, help="their learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pairs (default: %(default)s)")
    parser.add_argument("--plot", default=None, help="write the bar chart to this PNG (default: none)")
    args = parser.parse_args(argv)
    if args.grad_draws > args.draws:
        parser.error("--grad-draws cannot exceed --draws.")
    torch.manual_seed(0)
    reference, tokenizer = load_from_args(args)
    reference = reference.float().eval().requires_grad_(False)
    mask_id = reference.config.mask_token_id
    batch = benchmark_pairs(tokenizer, args.pairs, args.seed)
    policy = policy_near(reference, batch, args.policy_steps, args.policy_lr, args.beta, mask_id)
    results = {
        name: measure(policy, reference, batch, name, args.draws, args.grad_draws, args.beta, mask_id)
        for name in SETTINGS
    }
    print(f"{args.pairs} pairs, {args.draws} draws ({args.grad_draws} with a backward); policy: the reference after "
          f"{args.policy_steps} VRPO steps at lr {args.policy_lr}; beta {args.beta}")  # fmt: skip
    print("| setting | score variance | score mean | grad-norm variance | grad-norm mean | s |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['score_var']:.4g} | {r['score_mean']:.4g} | {r['grad_norm_var']:.4g} | "
              f"{r['grad_norm_mean']:.4g} | {r['seconds']:.0f} |")  # fmt: skip
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    run_command(main)
