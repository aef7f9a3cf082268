"""Forward and reversal completion accuracy of a Genjo model on pairs of texts (the reversal curse).

The data file holds pairs {"first": ..., "second": ...}, e.g. two consecutive lines of a poem: a JSON
list, or JSONL (one object per line). Forward ("ftb"): given the first, the model must produce the
second; reversal ("btf"): given the second, the first. A model that learned the pairs in one order only
(an autoregressive one) does much worse in reverse; the paper reports the 8B Instruct model close to
its forward accuracy on Chinese poem couplets (arXiv 2502.09992).

The question is asked as one chat turn (``--no-chat`` for plain completion with a base model), in the
format of the original evaluation:

    zh (default)  {first}的下一句是什么？ 直接输出句子即可。       /  {second}的上一句是什么？ 直接输出句子即可。
    en            What is the next sentence of "{first}"? Just output the sentence directly.  / ...previous...
    custom        --forward-template / --reverse-template, with {text} where the given line goes

An answer is correct when the expected line is contained in the decoded output (``--match contains``,
as the original) or equal to it after stripping (``--match exact``).

Sampler flags left unset take the checkpoint's ``sampler_defaults``, else the fallbacks of ``genjo.settings``
(128 tokens in one block of 128 steps). The original evaluation decoded 28 tokens in one block, one token
per step, greedy: pass ``--gen-length 28 --steps 28 --block-length 28`` to match it.

    python eval_reverse.py --data pairs.jsonl --model PATH/8B-Instruct --gen-length 28 --steps 28 --block-length 28
    python eval_reverse.py --data pairs.jsonl --type btf --output btf.jsonl
"""

import argparse
import json
from typing import Optional

from genjo.cli import run_command
from genjo.evaluation import answer_questions
from genjo.loading import add_model_arguments, load_from_args
from genjo.reversal import complete
from genjo.sampling import check_sampler_settings
from genjo.settings import CORE_SETTINGS, add_sampler_arguments, resolve_sampler_settings
from genjo.storage import read_lines

# (forward question, reverse question, instruction appended to both); {text} is the given line.
PROMPT_FORMATS = {
    "zh": ("{text}的下一句是什么？", "{text}的上一句是什么？", " 直接输出句子即可。"),
    "en": (
        'What is the next sentence of "{text}"?',
        'What is the previous sentence of "{text}"?',
        " Just output the sentence directly.",
    ),
    "custom": (None, None, ""),
}
DIRECTIONS = {"ftb": "forward", "btf": "reversal"}
# The sampler flags offered: the answer's length and schedule, and the two EOS options of the original's.
SAMPLER_NAMES = (*CORE_SETTINGS, "logits_eos_inf", "confidence_eos_eot_inf")


def load_pairs(path: str) -> list[dict]:
    """The pairs of a JSON list or a JSONL file; ValueError naming the item that is not a pair of non-empty
    strings (an empty expected line would be "contained" in every output and scored correct)."""
    lines = read_lines(path)
    if "".join(lines).lstrip().startswith("["):
        try:
            items = [(f"item {i}", item) for i, item in enumerate(json.loads("\n".join(lines)))]
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not a JSON list ({error.msg} at line {error.lineno}).") from None
    else:
        items = []
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    items.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}, line {number}: not JSON ({error.msg}).") from None
    for where, item in items:
        if not (isinstance(item, dict) and isinstance(item.get("first"), str) and isinstance(item.get("second"), str)):
            raise ValueError(
                f'{path}, {where}: expected {{"first": "...", "second": "..."}} (two strings), got {item!r}.'
            )
        empty = [key for key in ("first", "second") if not item[key].strip()]
        if empty:
            raise ValueError(f"{path}, {where}: '{empty[0]}' is empty; every pair needs two non-empty lines of text.")
    if not items:
        raise ValueError(f"{path} holds no pairs.")
    return [item for _, item in items]


def prompts_for(pairs: list[dict], direction: str, forward_template: str, reverse_template: str, extra: str):
    """(questions, expected answers) of one direction: 'ftb' (first -> second) or 'btf' (second -> first)."""
    if direction == "ftb":
        return [forward_template.format(text=p["first"]) + extra for p in pairs], [p["second"] for p in pairs]
    return [reverse_template.format(text=p["second"]) + extra for p in pairs], [p["first"] for p in pairs]


def is_correct(output: str, expected: str, match: str) -> bool:
    return expected.strip() in output if match == "contains" else output.strip() == expected.strip()


def evaluate_pairs(
    model,
    tokenizer,
    pairs,
    directions,
    templates,
    chat=True,
    match="contains",
    batch_size=8,
    progress=True,
    **generate_kwargs,
) -> dict[str, dict]:
    """Accuracy and per-item outputs of each direction: {direction: {"accuracy", "records"}}.

    templates: (forward question, reverse question, appended instruction), as in PROMPT_FORMATS.
    generate_kwargs go to generate() (gen_length, steps, block_length, temperature, cfg_scale, ...).
    """
    results = {}
    for direction in directions:
        questions, expected = prompts_for(pairs, direction, *templates)
        if chat:
            outputs = answer_questions(model, tokenizer, questions, batch_size, progress, **generate_kwargs)
        else:
            outputs = complete(model, tokenizer, questions, batch_size=batch_size, progress=progress, **generate_kwargs)
        records = [
            {"question": q, "expected": e, "output": o, "correct": is_correct(o, e, match)}
            for q, e, o in zip(questions, expected, outputs)
        ]
        results[direction] = {"accuracy": sum(r["correct"] for r in records) / len(records), "records": records}
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help='pairs file: JSON list or JSONL of {"first": ..., "second": ...}')
    parser.add_argument(
        "--type",
        choices=["ftb", "btf", "both"],
        default="both",
        help="ftb: given the first, produce the second (forward); btf: given the second, the "
        "first (reversal); both (default): report the two",
    )
    parser.add_argument(
        "--prompt-format",
        choices=list(PROMPT_FORMATS),
        default="en",
        help="question wording: en, zh (the original evaluation's Chinese, for the published couplets), or custom "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--forward-template",
        default=None,
        help="forward question with {text} for the first line (default: --prompt-format's)",
    )
    parser.add_argument(
        "--reverse-template",
        default=None,
        help="reversal question with {text} for the second line (default: --prompt-format's)",
    )
    parser.add_argument(
        "--extra-prompt",
        default=None,
        help="instruction appended to every question (default: the format's; '' for none)",
    )
    parser.add_argument(
        "--no-chat",
        action="store_true",
        help="plain completion of the question, without the chat template (base models)",
    )
    parser.add_argument(
        "--match",
        choices=["contains", "exact"],
        default="contains",
        help="contains (default, as the original): the expected line occurs in the output; "
        "exact: equal after stripping",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="questions per generate() call (default: 8)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N pairs (default: all)")
    parser.add_argument(
        "--output", default=None, help="write every question, output and verdict to this JSONL (default: none)"
    )
    return add_sampler_arguments(parser, names=SAMPLER_NAMES)


def main(argv: Optional[list[str]] = None) -> dict[str, dict]:
    args = build_parser().parse_args(argv)
    forward, reverse, extra = PROMPT_FORMATS[args.prompt_format]
    forward, reverse = args.forward_template or forward, args.reverse_template or reverse
    for name, template in (("--forward-template", forward), ("--reverse-template", reverse)):
        if not template or "{text}" not in template:
            raise ValueError(
                f"{name} must contain {{text}} (where the given line goes); got {template!r}. "
                "--prompt-format custom needs both templates."
            )
    extra = args.extra_prompt if args.extra_prompt is not None else extra
    for name in ("limit", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; got {value}.")
    pairs = load_pairs(args.data)[: args.limit]
    model, tokenizer = load_from_args(args)
    settings = resolve_sampler_settings(args, model, names=SAMPLER_NAMES)
    check_sampler_settings(model, **settings)
    directions = ["ftb", "btf"] if args.type == "both" else [args.type]
    results = evaluate_pairs(
        model,
        tokenizer,
        pairs,
        directions,
        (forward, reverse, extra),
        chat=not args.no_chat,
        match=args.match,
        batch_size=args.batch_size,
        **settings,
    )
    print(f"{len(pairs)} pairs from {args.data}; model {args.model}; sampler {settings}")
    for direction, result in results.items():
        print(f"{direction} ({DIRECTIONS[direction]}) accuracy: {result['accuracy']:.4f}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            for direction, result in results.items():
                for record in result["records"]:
                    f.write(json.dumps({"type": direction, **record}, ensure_ascii=False) + "\n")
    return results


if __name__ == "__main__":
    run_command(main)
