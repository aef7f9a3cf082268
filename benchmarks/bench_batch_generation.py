"""Batch generation from a file (generate.py --input/--output): requests/s by batch size and sampler setting.

Writes held-out problems of the synthetic task world as a JSONL file of chat requests, answers the file
with genjo.batch_generation.generate_file (the code behind generate.py --input) once per batch size
and setting, and prints one markdown table: requests/s, answer tokens/s (tokens before the end of
turn), forward passes, exact-match accuracy and the speed-up over the default sampler at batch 1.
The settings take turns within each repeat, so a slow spell of a shared machine hits them alike.

    python benchmarks/bench_batch_generation.py                       # embedded model, CPU
    python benchmarks/bench_batch_generation.py --model <8B-Instruct> --requests 256 --batch-sizes 1 8 32 64
"""

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

from genjo import tinyworld
from genjo.batch_generation import generate_file
from genjo.cli import run_command
from genjo.loading import add_model_arguments, load_from_args
from genjo.settings import resolve_sampler_settings

SETTINGS = {  # name -> generate() keyword arguments on top of the checkpoint's own sampler settings
    "default": dict(),
    "fast (threshold 0.9 + dual cache)": dict(threshold=0.9, cache="dual"),
}


def main() -> None:
    parser = add_model_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--requests", type=int, default=64, help="held-out problems answered per run (default: 64)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="(default: 1 8 32)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of every row, interleaved (default: 2)")
    parser.add_argument("--seed", type=int, default=20_000, help="seed of the problems (default: 20000)")
    args = parser.parse_args()

    model, tokenizer = load_from_args(args)
    own = resolve_sampler_settings({}, model)  # the checkpoint's sampler_defaults
    problems = tinyworld.sample_problems(args.requests, seed=args.seed, split="heldout")
    device = torch.cuda.get_device_name() if model.device.type == "cuda" else platform.processor() or "CPU"
    print(f"model {args.model}, {model.dtype}, {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{len(problems)} held-out chat requests; gen_length {own['gen_length']}, steps {own['steps']}, "
          f"block {own['block_length']}, temperature {own['temperature']}; {args.repeats} repeats\n")  # fmt: skip

    rows = {(name, b): dict(wall=0.0, answered=0, tokens=0, nfe=0, correct=0) for name in SETTINGS
            for b in args.batch_sizes}  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "requests.jsonl"
        source.write_text("".join(json.dumps({"id": i, "messages": tinyworld.chat_messages(p)[:1], "gold": p.answer})
                                  + "\n" for i, p in enumerate(problems)))  # fmt: skip
        # Warm-up: the first calls allocate and load kernels.
        warm = Path(folder) / "warm.jsonl"
        warm.write_text(source.read_text().splitlines()[0] + "\n")
        generate_file(model, tokenizer, warm, Path(folder) / "warm-out.jsonl", own, progress=False)
        for repeat in range(args.repeats):
            for (name, batch_size), row in rows.items():
                output = Path(folder) / "answers.jsonl"
                output.unlink(missing_ok=True)
                settings = {**own, **SETTINGS[name]}
                s = generate_file(model, tokenizer, source, output, settings, batch_size=batch_size, progress=False)
                answers = [json.loads(line) for line in output.read_text().splitlines()]
                row["wall"] += s.wall_s
                row["answered"] += s.answered
                row["tokens"] += s.answer_tokens
                row["nfe"] += s.nfe
                row["correct"] += sum(a["answer"].strip() == a["gold"] for a in answers)
                print(f"  repeat {repeat + 1}: {name}, batch {batch_size}: {s.wall_s:.1f} s", file=sys.stderr)

    base = rows["default", args.batch_sizes[0]]
    base_rate = base["answered"] / base["wall"]
    print("| setting | batch size | requests/s | answer tokens/s | forwards per run | accuracy % | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for (name, batch_size), r in rows.items():
        rate = r["answered"] / r["wall"]
        print(f"| {name} | {batch_size} | {rate:.2f} | {r['tokens'] / r['wall']:.1f} | {r['nfe'] // args.repeats} | "
              f"{100 * r['correct'] / r['answered']:.1f} | {rate / base_rate:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    run_command(main)
