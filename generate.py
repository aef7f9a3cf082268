"""Answer prompts with the Genjo sampler (reverse masked diffusion, arXiv 2502.09992, Algorithms 4 and 5).

    python generate.py                                          # the demo questions, embedded model
    python generate.py --question "Sort: 7 3 9 1 4" --steps 16
    python generate.py --input prompts.jsonl --output answers.jsonl [--cache dual --threshold 0.9]
    accelerate launch generate.py --input prompts.jsonl --output answers.jsonl

The sampler itself lives in ``genjo.sampling``; this script re-exports it, so notebooks keep writing

    from generate import generate
    out = generate(model, prompt_ids, steps=128, gen_length=128, block_length=32)
"""

import argparse

from genjo.batch_generation import DEFAULT_BATCH_SIZE, DEFAULT_SEED, answer_records, generate_file, process_info
from genjo.cli import run_command
from genjo.loading import add_model_arguments, load_from_args
from genjo.sampling import (  # noqa: F401 - re-exported for `from generate import ...`
    CACHES,
    EOS_ID,
    EOT_ID,
    MASK_ID,
    REMASKING,
    REMASKING_RULES,
    GenerationStats,
    StepInfo,
    add_gumbel_noise,
    commit_top_k,
    generate,
    get_num_transfer_tokens,
    parallel_commit_count,
    rand_columns,
    token_confidence,
)
from genjo.settings import add_sampler_arguments, resolve_sampler_settings

DEMO_QUESTIONS = ["What is the capital of France?", "Sort: 7 3 9 1 4", "Reverse: alpha bravo charlie delta"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Answer prompts with the Genjo sampler. With --input/--output: a JSONL file of requests "
        "('messages' for a chat model, or 'prompt': raw text for a base model; optional 'id') in, the same lines "
        "plus 'answer' out, in input order; resumable, and data-parallel under `accelerate launch`. Without: "
        "answers --question (default: three demo questions).",
    )
    add_model_arguments(parser)
    parser.add_argument("--input", default=None,
                        help="JSONL file of requests, one JSON object per line (default: none, run the demo "
                             "questions)")  # fmt: skip
    parser.add_argument("--output", default=None,
                        help="JSONL file of answers; requests already in it are kept, not generated again "
                             "(default: none)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="prompts per sampler call; one at temperature > 0 or with random remasking "
                             "(default: %(default)s)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="base of the per-request seeds used at temperature > 0 or with random remasking "
                             "(default: %(default)s)")  # fmt: skip
    parser.add_argument("--question", action="append",
                        help="a chat question to answer without --input (repeatable; default: three demo "
                             "questions)")  # fmt: skip
    return add_sampler_arguments(parser)


def main(argv=None) -> None:
    """Answer a JSONL file of prompts (--input/--output), or the demo questions."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.input is None) != (args.output is None):
        parser.error("--input and --output go together.")
    if args.input is not None and args.question:
        parser.error("--question is for the demo; put the questions in the --input file instead.")
    processes = process_info()
    if processes.device is not None and args.device_map is None:  # under accelerate each process has its device
        args.device = str(processes.device)
    model, tokenizer = load_from_args(args)
    settings = resolve_sampler_settings(args, model)

    if args.input is not None:
        summary = generate_file(model, tokenizer, args.input, args.output, settings, batch_size=args.batch_size,
                                seed=args.seed, processes=processes)  # fmt: skip
        if processes.is_main:
            print(summary.line(args.output))
        return
    if not processes.is_main:
        return
    questions = args.question or DEMO_QUESTIONS
    records = [{"messages": [{"role": "user", "content": q}]} for q in questions]
    answers = answer_records(model, tokenizer, records, settings, batch_size=args.batch_size, seed=args.seed)
    for question, answer in zip(questions, answers):
        print(f"Q: {question}\nA: {answer}")
        print("-" * 50)


if __name__ == "__main__":
    run_command(main)
