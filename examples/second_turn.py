"""Teach the single-turn embedded instruct model to answer a second question, by VRPO on its own mistakes.

    python -m examples.second_turn prompts prompts.jsonl --n 480                  # first turn done, second asked
    python -m genjo.train.pairs --input prompts.jsonl --output prefs_second.jsonl # (its answer, the right one)
    python -m examples.second_turn prompts firsts.jsonl --n 160 --turn first      # questions asked alone
    python -m genjo.train.pairs --input firsts.jsonl --output prefs_first.jsonl --corrupt   # (right, corrupted)
    python -m genjo.train vrpo --init genjo/checkpoints/genjo-tiny-instruct --data 'prefs_*.jsonl' \
        --run-dir runs/vrpo --steps 40 --budget 4
    python -m examples.second_turn accuracy --model runs/vrpo/final                # first and second turns

A conversation is a first question of any family with its correct answer, then a second question of
sorting, reversal or addition. The embedded model, fine-tuned on one question at a time, garbles many second
answers. Pairs of first turns (its right answer against a corrupted copy), mixed in, keep what it knew.
`prompts` draws the questions from the tiny world's training split (`--split`), `accuracy` asks held-out ones
(the 10% of questions no training data ever contains), second turns on conversations of another seed, and
first turns alone (held-out problems of the same three families) to see that they are kept.
"""

import argparse
import json
import random

from genjo import tinyworld
from genjo.cli import run_command

SECOND_FAMILIES = ("sorting", "reversal", "addition")  # capitals: the held-out countries are unknown in any turn


def conversations(n: int, seed: int, split: str) -> list[tuple[list[dict], str]]:
    """n (messages ending with the second question, its correct answer) of the given split of second questions."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        first = tinyworld.sample_problem(rng, rng.choice(tinyworld.FAMILIES), "train")
        second = tinyworld.sample_problem(rng, rng.choice(SECOND_FAMILIES), split)
        out.append(([*tinyworld.chat_messages(first), {"role": "user", "content": second.question}], second.answer))
    return out


def first_turns(n: int, seed: int, split: str) -> list[tuple[list[dict], str]]:
    """n (messages of one question of sorting, reversal or addition, its correct answer) of the given split."""
    return [([{"role": "user", "content": p.question}], p.answer)
            for p in tinyworld.sample_problems(n, seed, SECOND_FAMILIES, split)]  # fmt: skip


def accuracy(model, tokenizer, n: int, seed: int = 12345, turns: str = "both") -> dict[str, float]:
    """Exact match on n held-out first turns and n held-out second turns (greedy, the checkpoint's settings);
    turns: "both", "first" or "second"."""
    from genjo.train.pairs import sample_answers

    kinds = {"first turn": first_turns, "second turn": conversations}
    scores = {}
    for name, make in kinds.items():
        if turns != "both" and not name.startswith(turns):
            continue
        items = make(n, seed, "heldout")
        answers = sample_answers(model, tokenizer, [m for m, _ in items], temperature=0.0)
        scores[name] = sum(own[0] == answer for own, (_, answer) in zip(answers, items)) / len(items)
    return scores


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.second_turn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    prompts = sub.add_parser("prompts", help="write prompts with their correct answers (genjo.train.pairs input)")
    prompts.add_argument("output")
    prompts.add_argument("--n", type=int, default=600, help="conversations (default: %(default)s)")
    prompts.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    prompts.add_argument("--split", default="train", choices=["train", "heldout"],
                         help="split of the second questions (default: %(default)s)")  # fmt: skip
    prompts.add_argument("--turn", default="second", choices=["first", "second"],
                         help="second: a second question after a first turn; first: one question alone "
                              "(default: %(default)s)")  # fmt: skip
    scores = sub.add_parser("accuracy", help="exact match on held-out first and second turns")
    scores.add_argument("--model", default=None, help="checkpoint (default: the embedded instruct model)")
    scores.add_argument("--n", type=int, default=128, help="questions of each kind (default: %(default)s)")
    scores.add_argument("--seed", type=int, default=12345, help="seed of the questions (default: %(default)s)")
    scores.add_argument("--turns", default="both", choices=["both", "first", "second"],
                        help="which questions to ask (default: %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "prompts":
        with open(args.output, "w") as f:
            make = conversations if args.turn == "second" else first_turns
            for messages, answer in make(args.n, args.seed, args.split):
                f.write(json.dumps({"messages": messages, "answer": answer}) + "\n")
        return
    from genjo import load_model

    model, tokenizer = load_model(args.model) if args.model else load_model()
    scores = accuracy(model, tokenizer, args.n, args.seed, args.turns)
    print(json.dumps({k: round(100 * v, 2) for k, v in scores.items()}))


if __name__ == "__main__":
    run_command(main)
