"""Needle in a haystack: accuracy of a Genjo model retrieving a fact planted in long filler text, over a grid
of context lengths x needle depths, saved as JSON and drawn as a heat map (genjo/niah.py; EVAL.md).

    python eval_niah.py                                             # the embedded model, within its 1024 tokens
    python eval_niah.py --lengths 1024,2048,4096 --context-length 4128 --output niah.json
    python eval_niah.py --model GSAI-ML/LLaDA-8B-Instruct --lengths 4096,8192,16384,32768 \\
        --context-length 32800 --rope-scaling ntk --output niah_8b.json     # LongLLaDA's setting
"""

import argparse

from genjo.cli import run_command
from genjo.loading import add_model_arguments, load_from_args
from genjo.niah import accuracy_table, plot_heatmap, run_grid, save_results
from genjo.settings import add_sampler_arguments, resolve_sampler_settings


def numbers(kind):
    return lambda text: [kind(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = add_model_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    add_sampler_arguments(parser)
    parser.add_argument("--lengths", type=numbers(int), default=[256, 512, 1024 - 64],
                        help="comma-separated prompt lengths in tokens (default: 256,512,960)")  # fmt: skip
    parser.add_argument("--depths", type=numbers(float), default=[0.0, 0.25, 0.5, 0.75, 1.0],
                        help="comma-separated needle depths, 0 (start) .. 1 (end) "
                             "(default: 0,0.25,0.5,0.75,1)")  # fmt: skip
    parser.add_argument("--samples", type=int, default=4, help="needles per cell (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the needles and fillers (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="prompts per generate() call (default: %(default)s)")  # fmt: skip
    parser.add_argument("--digits", type=int, default=4, help="digits of the magic number (default: %(default)s)")
    parser.add_argument("--output", default="niah.json", help="JSON file of the results (default: %(default)s)")
    parser.add_argument("--plot", default=None, help="PNG heat map (default: the --output name with .png)")
    args = parser.parse_args()

    model, tokenizer = load_from_args(args)
    settings = resolve_sampler_settings(args, model)
    results = run_grid(model, tokenizer, args.lengths, args.depths, args.samples, args.seed, args.batch_size,
                       args.digits, **settings)  # fmt: skip
    results["model"] = args.model
    save_results(results, args.output)
    plot = args.plot or args.output.rsplit(".", 1)[0] + ".png"
    plot_heatmap(results, plot, title=f"{args.model.rstrip('/').split('/')[-1]}, RoPE base {results['rope_base']:g}")
    print(accuracy_table(results))
    print(f"\nresults: {args.output}; heat map: {plot}")


if __name__ == "__main__":
    run_command(main)
