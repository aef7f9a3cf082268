"""Record one generation step by step to JSON (and optionally the sample_process.txt log).

    python -m visualization.record --question "Sort: 9 3 7 1" --output trajectory.json
    python -m visualization.record --model PATH --steps 64 --gen-length 64 --block-length 64 \\
        --remasking random --log sample_process.txt --output trajectory.json

Sampler flags left unset take the checkpoint's ``sampler_defaults``, else the fallbacks of ``genjo.settings``.
"""

import argparse
import os

import torch

from genjo.cli import run_command
from genjo.loading import add_model_arguments, load_from_args
from genjo.settings import CORE_SETTINGS, add_renamed_argument, add_sampler_arguments, resolve_sampler_settings
from visualization.trajectory import record_generation, write_sample_process


def main(argv=None) -> None:
    parser = add_model_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument(
        "--question", default="Reverse: alpha bravo charlie delta", help="the user message (default: %(default)r)"
    )
    add_renamed_argument(parser, "--output", "--out", required=True, help="trajectory JSON to write (required)")
    parser.add_argument(
        "--log", default=None, help="also write the step log (one line of *token& per step) here (default: none)"
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed (default: %(default)s)")
    add_sampler_arguments(parser, names=CORE_SETTINGS)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model, tokenizer = load_from_args(args)
    settings = resolve_sampler_settings(args, model, names=CORE_SETTINGS)
    trajectory = record_generation(model, tokenizer, args.question, **settings)
    # A checkpoint folder is recorded by its name, not by a path of the machine that made the picture.
    trajectory.settings["model"] = (
        os.path.basename(os.path.normpath(args.model)) if os.path.isdir(args.model) else args.model
    )
    trajectory.to_json(args.output)
    if args.log:
        write_sample_process(trajectory, args.log)
    print(f"{args.question!r} -> {trajectory.answer!r} ({trajectory.num_steps} steps) written to {args.output}")


if __name__ == "__main__":
    run_command(main)
