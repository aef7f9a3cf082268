"""Teach the embedded instruct model a task it has never seen: "Double: 3 9 1" -> "3 3 9 9 1 1".

    python -m examples.double_task data runs/double.jsonl                      # the SFT data file
    python -m examples.double_task accuracy                               # the embedded model (before)
    python -m genjo.train sft --init genjo/checkpoints/genjo-tiny-instruct --data runs/double.jsonl ...
    python -m examples.double_task accuracy --model runs/double/final # the fine-tuned model (after)

The file holds chat conversations ({"messages": [...]}, one per line): questions of 3 to 6 digits, and a
share of the model's own four tasks so that it keeps them. 10% of the doubling questions (chosen by a
hash of the question) never appear in the file; `accuracy` asks those, held-out problems of sorting,
reversal and addition, and capitals of the countries taught in chat.
"""

import argparse
import hashlib
import json
import os
import random

from genjo import tinyworld
from genjo.cli import run_command

# Sorting, the task nearest to doubling (a list of digits in, a list of digits out), is the one the model
# forgets first: it gets the largest share of the model's own tasks in the file.
OWN_TASK_WEIGHTS = {"capitals": 0.1, "sorting": 0.5, "reversal": 0.1, "addition": 0.3}


def double_problem(rng: random.Random) -> tuple[str, str]:
    digits = [str(rng.randint(0, 9)) for _ in range(rng.randint(3, 6))]
    return "Double: " + " ".join(digits), " ".join(d + " " + d for d in digits)


def is_test_question(question: str) -> bool:
    return hashlib.sha256(question.encode()).digest()[0] < 26  # about 10%


def sample(rng: random.Random, test: bool) -> tuple[str, str]:
    while True:
        question, answer = double_problem(rng)
        if is_test_question(question) == test:
            return question, answer


def write_data(path: str, n: int, own_tasks: float, seed: int) -> None:
    rng = random.Random(seed)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # runs/ (git-ignored) by default in the docs
    with open(path, "w") as f:
        for _ in range(n):
            if rng.random() < own_tasks:
                family = rng.choices(list(OWN_TASK_WEIGHTS), list(OWN_TASK_WEIGHTS.values()))[0]
                problem = tinyworld.sample_problem(rng, family, "train")
                question, answer = problem.question, problem.answer
            else:
                question, answer = sample(rng, test=False)
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": messages}) + "\n")
    print(f"wrote {n} conversations to {path}")


def accuracy(model_path: str, n: int, seed: int) -> None:
    from genjo.evaluation import answer_questions, family_accuracy, format_accuracy_table
    from genjo.loading import load_model

    model, tokenizer = load_model(model_path)
    rng = random.Random(seed)
    pairs = [sample(rng, test=True) for _ in range(n)]
    answers = answer_questions(model, tokenizer, [q for q, _ in pairs], progress=True)
    # Held-out problems of the procedures; for capitals (facts) the 65 countries taught in chat.
    problems = tinyworld.sample_problems(3 * n, seed, ("sorting", "reversal", "addition"), split="heldout")
    problems += tinyworld.sample_problems(n, seed, ("capitals",), split="train")
    result = family_accuracy(model, tokenizer, problems, progress=True)
    result["doubling"] = sum(a == b for a, (_, b) in zip(answers, pairs)) / n
    print(f"{n} held-out questions per task; example: {pairs[0][0]!r} -> {answers[0]!r}\n")
    print(format_accuracy_table({model_path: result}, ["doubling", *tinyworld.FAMILIES]))


def main() -> None:
    from genjo.loading import DEFAULT_MODEL

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="write the SFT data file")
    data.add_argument("out", help="the .jsonl file to write")
    data.add_argument("--n", type=int, default=20_000, help="conversations (default: %(default)s)")
    data.add_argument("--own-tasks", type=float, default=0.5,
                      help="share of the model's four tasks among them (default: %(default)s)")  # fmt: skip
    data.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    acc = sub.add_parser("accuracy", help="exact match on held-out doubling questions and the four tasks")
    acc.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder (default: the embedded instruct)")
    acc.add_argument("--n", type=int, default=100, help="questions per task (default: %(default)s)")
    acc.add_argument("--seed", type=int, default=1, help="default: %(default)s")
    args = parser.parse_args()
    if args.command == "data":
        write_data(args.out, args.n, args.own_tasks, args.seed)
    else:
        accuracy(args.model, args.n, args.seed)


if __name__ == "__main__":
    run_command(main)
