"""Left-padded batches against solo runs: how often a row gives exactly its solo tokens, per dtype.

Runs held-out chat prompts of the synthetic task world through generate() in left-padded batches
and one by one, with the same settings, and prints per dtype the share of rows whose answer equals
their solo answer exactly and the share of equal answer tokens. In fp32 padding changes nothing
(padding keys are hidden, positions start at each row's first token); in bf16 the batched matrix
products round differently for different shapes, which can flip a near-tie between two proposals.

    python benchmarks/bench_padding.py                          # embedded instruct model, CPU
    python benchmarks/bench_padding.py --random-weights 0.5             # its architecture, random weights
    python benchmarks/bench_padding.py --model <8B-Instruct> --dtypes bfloat16
"""

import argparse

import torch
from tqdm import tqdm

from genjo import tinyworld
from genjo.chat_format import question_batch
from genjo.cli import run_command
from genjo.loading import add_model_arguments, load_from_args
from genjo.sampling import generate
from genjo.settings import add_sampler_arguments, resolve_sampler_settings

# The sampler flags offered; the comparison is greedy (temperature 0), where a solo run has one answer.
SAMPLER_NAMES = ("gen_length", "steps", "block_length", "cache")


def main() -> None:
    parser = add_model_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--problems", type=int, default=64, help="held-out chat problems (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per padded batch (default: %(default)s)")
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], help="model dtypes (default: %(default)s)"
    )
    parser.add_argument("--random-weights", type=float, default=None, metavar="STD",
                        help="replace the weights by N(0, STD) draws (seed 0); config and tokenizer stay (default: the "
                             "checkpoint's weights)")  # fmt: skip
    add_sampler_arguments(parser, names=SAMPLER_NAMES)
    args = parser.parse_args()

    model, tokenizer = load_from_args(args)
    if args.random_weights is not None:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if not name.endswith("norm.weight") and not name.endswith("ln_f.weight"):
                    values = torch.randn(parameter.shape, generator=generator) * args.random_weights
                    parameter.copy_(values)
    kwargs = resolve_sampler_settings(args, model, names=SAMPLER_NAMES)
    questions = [p.question for p in tinyworld.sample_problems(args.problems, seed=1, split="heldout")]
    weights = "" if args.random_weights is None else f" with N(0, {args.random_weights}) random weights"
    print(f"{args.model}{weights}: {args.problems} held-out chat prompts, batches of {args.batch_size} (left-padded), "
          f"temperature 0, {kwargs}\n")  # fmt: skip
    print("| dtype | rows equal to their solo run | answer tokens equal |")
    print("|---|---|---|")
    for name in args.dtypes:
        model = model.to(getattr(torch, name))
        rows_equal = tokens_equal = tokens = 0
        for first in tqdm(range(0, len(questions), args.batch_size), desc=name, leave=False):
            batch = questions[first : first + args.batch_size]
            ids, mask = question_batch(tokenizer, batch, device=model.device)
            together = generate(model, ids, mask, **kwargs)[:, ids.shape[1] :]
            for row, question in enumerate(batch):
                solo_ids, _ = question_batch(tokenizer, [question], device=model.device)
                solo = generate(model, solo_ids, **kwargs)[0, solo_ids.shape[1] :]
                rows_equal += bool(torch.equal(together[row], solo))
                tokens_equal += int((together[row] == solo).sum())
                tokens += solo.numel()
        print(f"| {name} | {rows_equal}/{len(questions)} ({100 * rows_equal / len(questions):.1f}%) | "
              f"{100 * tokens_equal / tokens:.2f}% |")  # fmt: skip


if __name__ == "__main__":
    run_command(main)
