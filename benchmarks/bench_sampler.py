"""Sampler speed and accuracy, every setting side by side in one process.

For each answer length, runs the default sampler (steps = gen_length, block 32) and the fast
options of generate() on the same held-out problems of the synthetic task world, and prints one
markdown table per length: forwards (NFE), tokens committed per forward, wall time, useful tokens/s
(answer tokens before the end of turn), canvas tokens/s, exact-match accuracy, and the speed-up over
the default sampler.

    python benchmarks/bench_sampler.py                           # embedded model, CPU
    python benchmarks/bench_sampler.py --model <8B-Instruct> --gen-lengths 256 512
"""

import argparse
import platform
import sys
import time

import torch

from genjo import tinyworld
from genjo.chat_format import question_batch
from genjo.cli import run_command
from genjo.loading import add_model_arguments, load_from_args
from genjo.sampling import GenerationStats, generate

SETTINGS = {  # name -> generate() keyword arguments on top of gen_length/block_length
    "default (1 token/step)": dict(),
    "prefix cache": dict(cache="prefix"),
    "dual cache": dict(cache="dual"),
    "threshold 0.9": dict(threshold=0.9),
    "threshold 0.9 + prefix": dict(threshold=0.9, cache="prefix"),
    "threshold 0.9 + dual": dict(threshold=0.9, cache="dual"),
    "threshold 0.9 + dual + early stop": dict(threshold=0.9, cache="dual", early_stop=True),
    "factor 1.0 + dual + early stop": dict(factor=1.0, cache="dual", early_stop=True),
}


def run_setting(model, tokenizer, problems, gen_length, block_length, batch_size, kwargs) -> dict:
    """Answer every problem with one setting; returns the measurements of one table row."""
    stats = GenerationStats()
    correct = useful_tokens = row_forwards = 0
    stop_ids = torch.tensor([tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|eot_id|>")])
    started = time.perf_counter()
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        prompt, attention_mask = question_batch(tokenizer, [p.question for p in chunk], model.device)
        nfe_before = stats.nfe
        out = generate(model, prompt, attention_mask, steps=gen_length, gen_length=gen_length,
                       block_length=block_length, stats=stats, **kwargs)  # fmt: skip
        row_forwards += (stats.nfe - nfe_before) * len(chunk)
        answers = out[:, prompt.shape[1] :].cpu()
        for problem, ids in zip(chunk, answers):
            stop = torch.isin(ids, stop_ids).nonzero()
            useful_tokens += int(stop[0]) if len(stop) else len(ids)
            correct += tokenizer.decode(ids, skip_special_tokens=True).strip() == problem.answer
    wall = time.perf_counter() - started
    return dict(
        nfe=stats.nfe,
        tokens_per_forward=len(problems) * gen_length / row_forwards,  # answer slots decoded per forward per row
        wall=wall,
        useful_tps=useful_tokens / wall,
        canvas_tps=len(problems) * gen_length / wall,
        accuracy=100 * correct / len(problems),
    )


def format_table(rows: dict[str, dict]) -> str:
    base = next(iter(rows.values()))
    lines = [
        "| setting | NFE | tokens/forward | wall s | useful tok/s | canvas tok/s | accuracy % | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['nfe']} | {r['tokens_per_forward']:.2f} | {r['wall']:.1f} | {r['useful_tps']:.1f} | "
            f"{r['canvas_tps']:.0f} | {r['accuracy']:.1f} | {base['wall'] / r['wall']:.1f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = add_model_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--gen-lengths", type=int, nargs="+", default=[64, 256, 512],
                        help="answer lengths, one table each; steps = gen_length (default: %(default)s)")  # fmt: skip
    parser.add_argument("--block-length", type=int, default=32,
                        help="tokens of a semi-autoregressive block (default: %(default)s)")  # fmt: skip
    parser.add_argument("--problems", type=int, default=32,
                        help="held-out problems, spread over the families (default: %(default)s)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32,
                        help="problems per generate() call (default: %(default)s)")  # fmt: skip
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), metavar="SETTING",
                        help="subset of: " + " | ".join(SETTINGS) + " (default: all)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=20_000,
                        help="seed of the problem sampler (default: %(default)s)")  # fmt: skip
    args = parser.parse_args()

    torch.manual_seed(0)
    model, tokenizer = load_from_args(args)
    problems = tinyworld.sample_problems(args.problems, seed=args.seed, split="heldout")
    device = torch.cuda.get_device_name() if model.device.type == "cuda" else platform.processor() or "CPU"
    print(f"model {args.model}, {model.dtype}, {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{len(problems)} held-out problems, batch {args.batch_size}, block {args.block_length}, temperature 0\n")
    run_setting(model, tokenizer, problems[:2], 32, 32, 2, {})  # warm-up: first calls allocate and load kernels
    for gen_length in args.gen_lengths:
        rows = {}
        for name in args.settings:
            rows[name] = run_setting(model, tokenizer, problems, gen_length, args.block_length, args.batch_size,
                                     SETTINGS[name])  # fmt: skip
            print(f"  gen_length {gen_length}: {name} done in {rows[name]['wall']:.1f} s", file=sys.stderr)
        print(f"### gen_length {gen_length}\n\n{format_table(rows)}\n", flush=True)


if __name__ == "__main__":
    run_command(main)
