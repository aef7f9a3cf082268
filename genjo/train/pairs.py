"""Preference pairs from a model's own answers, labelled by a checker: the data of ``python -m genjo.train vrpo``.

The input is a JSON-lines file of prompts with their correct answer,
``{"messages": [... ending with the user's turn], "answer": "..."}``. The model answers each prompt
``--samples`` times (the sampler flags of every script; a temperature > 0 gives different answers); a checker
(exact match with the "answer" after stripping, by default) labels each one. A prompt gives a pair when some
answer is wrong: rejected = the model's first wrong answer, chosen = its first correct answer, or the given
"answer" when none was correct. Prompts the model always answers correctly give no pair, unless ``--corrupt``:
then they give (its correct answer, a corrupted copy of it), pairs that reward what the model already does
right, to mix with the others so that training on its mistakes does not cost it what it knew.

    python -m genjo.train.pairs --input prompts.jsonl --output prefs.jsonl --samples 2 --temperature 0.8
    python -m genjo.train.pairs --input known.jsonl --output keep.jsonl --corrupt     # pairs of correct answers
"""

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..chat_format import encode_chat, left_padded
from ..cli import run_command
from ..sampling import generate
from ..settings import resolve_sampler_settings
from .files import check_messages, json_objects


def read_prompts(path: str) -> list[dict]:
    """The records of a prompts file, checked: ValueError naming the file and line of a bad one."""
    records = []
    for record, location in json_objects(path):
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(record.get("answer"), str):
            raise ValueError(f'{location}: each line must be like {{"messages": [{{"role": "user", "content": '
                             f'"..."}}], "answer": "the correct answer"}}.')  # fmt: skip
        check_messages(messages, location)
        if messages[-1]["role"] != "user":
            raise ValueError(f"{location}: the messages must end with the user's turn.")
        records.append(record)
    return records


def sample_answers(
    model, tokenizer, conversations: Sequence[list], samples: int = 1, batch_size: int = 32, seed: int = 0,
    progress: bool = False, **generate_kwargs,
) -> list[list[str]]:  # fmt: skip
    """`samples` answers of the model to each conversation (messages ending with the user's turn).

    generate_kwargs: ``generate()`` settings; those left out are the checkpoint's own. Sample j of every
    conversation is drawn with torch seeded by seed + j. Returns one list of stripped answer texts per conversation.
    """
    kwargs = {**generate_kwargs, **resolve_sampler_settings(generate_kwargs, model)}
    prompts = [encode_chat(tokenizer, messages) for messages in conversations]
    answers: list[list[str]] = [[] for _ in prompts]
    starts = range(0, len(prompts), batch_size)
    for j in range(samples):
        torch.manual_seed(seed + j)
        for start in tqdm(starts, desc=f"sampling {j + 1}/{samples}", disable=not progress):
            ids, mask = left_padded(prompts[start : start + batch_size], tokenizer.pad_token_id, model.device)
            out = generate(model, ids, mask, **kwargs)
            texts = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
            for k, text in enumerate(texts):
                answers[start + k].append(text.strip())
    return answers


def corrupted(answer: str) -> str:
    """A wrong copy of an answer, never equal to it: the last word dropped ("1 2 3" -> "1 2"), else the last
    character ("43" -> "4"), else the answer said twice ("5" -> "5 5")."""
    words = answer.split()
    if len(words) >= 2:
        return " ".join(words[:-1])
    if len(answer.strip()) >= 2:
        return answer.strip()[:-1]
    return f"{answer.strip()} {answer.strip()}".strip() or "?"


def label_pairs(
    conversations: Sequence[list], answers: Sequence[list], is_correct: Callable[[int, str], bool],
    references: Optional[Sequence[str]] = None, corrupt: Optional[Callable[[str], str]] = None,
) -> list[dict]:  # fmt: skip
    """Preference records {"messages", "chosen", "rejected"} from labelled answers.

    is_correct(i, answer): the checker of conversation i. chosen: the first correct answer, else references[i]
    (when given); rejected: the first wrong answer different from chosen, else corrupt(chosen) when corrupt is
    given (a conversation the model always answers right). Conversations without both give none.
    """
    pairs = []
    for i, (messages, own) in enumerate(zip(conversations, answers)):
        correct = [a for a in own if is_correct(i, a)]
        chosen = correct[0] if correct else (references[i] if references is not None else None)
        wrong = [a for a in own if not is_correct(i, a) and a != chosen]
        if chosen is not None and not wrong and corrupt is not None and corrupt(chosen) != chosen:
            wrong = [corrupt(chosen)]
        if chosen is not None and wrong:
            pairs.append({"messages": list(messages), "chosen": chosen, "rejected": wrong[0]})
    return pairs


def exact_match(references: Sequence[str]) -> Callable[[int, str], bool]:
    """The default checker: answer i is correct when it equals references[i] (both stripped)."""
    return lambda i, answer: answer.strip() == references[i].strip()


def main(argv=None) -> None:
    from ..loading import add_model_arguments, load_from_args
    from ..settings import add_sampler_arguments

    parser = argparse.ArgumentParser(prog="python -m genjo.train.pairs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_model_arguments(parser)
    parser.add_argument("--input", required=True, help='JSON lines {"messages": [...], "answer": "..."}')
    parser.add_argument("--output", required=True, help="the preference pairs, JSON lines (default: none)")
    parser.add_argument("--samples", type=int, default=1, help="answers per prompt (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per forward (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (default: %(default)s)")
    parser.add_argument("--corrupt", action="store_true",
                        help="a prompt answered right every time gives (its answer, a corrupted copy) too")  # fmt: skip
    add_sampler_arguments(parser)
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be at least 1.")
    records = read_prompts(args.input)
    model, tokenizer = load_from_args(args)
    settings = resolve_sampler_settings(args, model)
    conversations = [r["messages"] for r in records]
    references = [r["answer"] for r in records]
    answers = sample_answers(model, tokenizer, conversations, args.samples, args.batch_size, args.seed, True,
                             **settings)  # fmt: skip
    pairs = label_pairs(
        conversations, answers, exact_match(references), references, corrupted if args.corrupt else None
    )
    with open(args.output, "w") as f:
        f.writelines(json.dumps(pair) + "\n" for pair in pairs)
    correct = sum(exact_match(references)(i, a) for i, own in enumerate(answers) for a in own)
    print(f"{len(pairs)} pairs from {len(records)} prompts ({correct} of {len(records) * args.samples} answers "
          f"correct) -> {args.output}")  # fmt: skip


if __name__ == "__main__":
    run_command(main, prog="python -m genjo.train.pairs")
