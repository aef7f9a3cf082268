"""Record one generation step by step to JSON (and optionally the sample_process.txt log).

    python -m visualization.record --question "Sort: 9 3 7 1" --out trajectory.json
    python -m visualization.record --model PATH --steps 64 --gen-length 64 --block-length 64 \\
        --remasking random --log sample_process.txt --out trajectory.json
"""

import argparse
import os

import torch

from genjo.loading import add_model_arguments, load_from_args, sampler_defaults
from genjo.sampling import REMASKING
from visualization.trajectory import record_generation, write_sample_process


def main(argv=None) -> None:
    parser = add_model_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument(
        "--question", default="Reverse: alpha bravo charlie delta", help="the user message (default: %(default)r)"
    )
    parser.add_argument("--out", required=True, help="trajectory JSON to write (required)")
    parser.add_argument(
        "--log", default=None, help="also write the step log (one line of *token& per step) here (default: none)"
    )
    parser.add_argument("--gen-length", type=int, default=None, help="default: the model's sampler_defaults or 64")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's sampler_defaults or gen_length")
    parser.add_argument(
        "--block-length", type=int, default=None, help="default: the model's sampler_defaults or gen_length"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default: %(default)s)")
    parser.add_argument("--cfg", type=float, default=0.0, help="classifier-free guidance scale (default: %(default)s)")
    parser.add_argument(
        "--remasking", choices=REMASKING, default="low_confidence", help="remasking rule (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed (default: %(default)s)")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model, tokenizer = load_from_args(args)
    defaults = sampler_defaults(model)
    gen_length = args.gen_length or defaults.get("gen_length", 64)
    kwargs = dict(
        gen_length=gen_length,
        steps=args.steps or defaults.get("steps", gen_length),
        block_length=args.block_length or min(defaults.get("block_length", gen_length), gen_length),
        temperature=args.temperature,
        cfg_scale=args.cfg,
        remasking=args.remasking,
    )
    trajectory = record_generation(model, tokenizer, args.question, **kwargs)
    # A checkpoint folder is recorded by its name, not by a path of the machine that made the picture.
    trajectory.settings["model"] = (
        os.path.basename(os.path.normpath(args.model)) if os.path.isdir(args.model) else args.model
    )
    trajectory.to_json(args.out)
    if args.log:
        write_sample_process(trajectory, args.log)
    print(f"{args.question!r} -> {trajectory.answer!r} ({trajectory.num_steps} steps) written to {args.out}")


if __name__ == "__main__":
    main()
