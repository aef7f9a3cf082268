"""Offline lm-eval tasks over the synthetic task world (held-out split), and their data.

Five tasks, over small JSONL files in ``data/`` generated deterministically here:

- ``genjo_tiny_choice``: 4-way multiple choice in plain-text form, for the base model.
  Context ``The capital of France is``, choices ``Paris.``, ``Rome.``, ... (lm-eval adds the space).
- ``genjo_tiny_choice_chat``: the same documents in chat form, for the instruct model with lm-eval's
  ``--apply_chat_template``: question ``What is the capital of France?``, choices ``Paris``, ``Rome``, ...
- ``genjo_tiny_gen``: chat questions answered by ``generate_until``, scored by exact match.
- ``genjo_tiny_prefix``: the same kind of questions with a ``gen_prefix``, the first item of the
  answer (``Sort: 3 1 2`` -> prefix ``1``), which pre-fills the assistant's answer; the model must
  generate the rest (``2 3``). A prefix wrongly put in the user turn makes the model answer in full.
- ``genjo_tiny_fewshot``: held-out questions after 3 solved examples of the training split, for
  ``--fewshot_as_multiturn`` (one user/assistant turn pair per example).

The YAML files load the data through ``custom_dataset: !function tiny_tasks.load_...``, which
builds the path from this file's location, so the tasks work from any directory and offline.
Loading needs only this file; the generator also imports the genjo package.

    python -m eval_tasks.tiny_tasks          # regenerate data/*.jsonl (identical output every time)
"""

import json
import random
from pathlib import Path
from typing import Optional

DATA_DIR = Path(__file__).resolve().parent / "data"
CHOICE_FILE = DATA_DIR / "choice.jsonl"
GEN_FILE = DATA_DIR / "gen.jsonl"
PREFIX_FILE = DATA_DIR / "prefix.jsonl"
FEWSHOT_FILE = DATA_DIR / "fewshot_train.jsonl"  # few-shot examples (training split) of genjo_tiny_fewshot
DOCS_PER_FAMILY = 50  # 200 documents per file
CHOICE_SEED, GEN_SEED, PREFIX_SEED, FEWSHOT_SEED = 20_250_501, 20_250_502, 20_250_503, 20_250_504
PREFIX_FAMILIES = ("sorting", "reversal", "addition")  # answers of several items: a prefix and a rest
PREFIX_DOCS_PER_FAMILY = 50
FEWSHOT_EXAMPLES = 40
NUM_CHOICES = 4

# Plain-text context per family: the pre-training sentence up to the answer (tinyworld.PLAIN_TEMPLATES).
PLAIN_CONTEXT = {
    "capitals": "The capital of {x} is",
    "sorting": "Sort {x} and you get",
    "reversal": "Reverse {x} and you get",
    "addition": "{x} =",
}


def _input_part(problem) -> str:
    """The country, digits, words or ``a + b`` of a question."""
    from genjo import tinyworld

    return tinyworld._parse(problem.family, problem.question)


def _perturbations(problem, rng: random.Random) -> list[str]:
    """Plausible wrong answers: near misses of the right one, most likely first."""
    from genjo import tinyworld

    answer, x = problem.answer, _input_part(problem)
    if problem.family == "capitals":
        return [capital for _, capital in rng.sample(tinyworld.CAPITALS, 8)]
    if problem.family == "addition":
        a, b = (int(v) for v in x.split(" + "))
        total = a + b
        return [str(v) for v in (total + 1, total - 1, total + 10, total - 10, abs(a - b), int(answer[::-1]), total + 2)
                if v >= 0]  # fmt: skip
    items = answer.split()
    pool = [str(d) for d in range(10)] if problem.family == "sorting" else list(tinyworld.NATO_WORDS)
    candidates = [x, " ".join(reversed(items))]  # the input unchanged; the wrong direction
    for _ in range(20):
        wrong = list(items)
        if rng.random() < 0.5:  # swap two neighbours
            i = rng.randrange(len(wrong) - 1)
            wrong[i], wrong[i + 1] = wrong[i + 1], wrong[i]
        else:  # replace one item
            wrong[rng.randrange(len(wrong))] = rng.choice(pool)
        candidates.append(" ".join(wrong))
    return candidates


def make_choice_doc(problem, rng: random.Random) -> dict:
    """One multiple-choice document: the right answer and three distinct distractors, shuffled."""
    distractors = []
    for wrong in _perturbations(problem, rng):
        if wrong != problem.answer and wrong not in distractors:
            distractors.append(wrong)
    if len(distractors) < NUM_CHOICES - 1:
        raise ValueError(f"could not find {NUM_CHOICES - 1} distractors for {problem}")
    answers = [problem.answer] + distractors[: NUM_CHOICES - 1]
    rng.shuffle(answers)
    return {
        "family": problem.family,
        "question": problem.question,
        "answer": problem.answer,
        "context": PLAIN_CONTEXT[problem.family].format(x=_input_part(problem)),
        "choices": [a + "." for a in answers],  # plain-text form: the sentence ends with a full stop
        "chat_choices": answers,
        "label": answers.index(problem.answer),
    }


def build_choice_docs(per_family: int = DOCS_PER_FAMILY, seed: int = CHOICE_SEED) -> list[dict]:
    """Multiple-choice documents over held-out problems (families interleaved)."""
    from genjo import tinyworld

    rng = random.Random(seed)
    problems = tinyworld.sample_problems(per_family * len(tinyworld.FAMILIES), seed, split="heldout")
    return [make_choice_doc(p, rng) for p in problems]


def build_gen_docs(per_family: int = DOCS_PER_FAMILY, seed: int = GEN_SEED) -> list[dict]:
    """Question/answer documents over held-out problems (families interleaved)."""
    from genjo import tinyworld

    problems = tinyworld.sample_problems(per_family * len(tinyworld.FAMILIES), seed, split="heldout")
    return [{"family": p.family, "question": p.question, "answer": p.answer} for p in problems]


def split_answer(family: str, answer: str) -> tuple[str, str]:
    """(prefix, rest) of an answer: its first item and the others (the other digits of a sum)."""
    if family == "addition":
        return answer[:1], answer[1:]
    first, _, rest = answer.partition(" ")
    return first, rest


def build_prefix_docs(per_family: int = PREFIX_DOCS_PER_FAMILY, seed: int = PREFIX_SEED) -> list[dict]:
    """Held-out questions whose answer has at least two items, with the first one as ``prefix``."""
    from genjo import tinyworld

    docs, rng = [], random.Random(seed)
    for family in PREFIX_FAMILIES:
        count = 0
        while count < per_family:
            problem = tinyworld.sample_problem(rng, family, split="heldout")
            prefix, rest = split_answer(family, problem.answer)
            if not rest or any(doc["question"] == problem.question for doc in docs):
                continue
            docs.append({"family": family, "question": problem.question, "answer": problem.answer,
                         "prefix": prefix, "rest": rest})  # fmt: skip
            count += 1
    return docs


def build_fewshot_docs(n: int = FEWSHOT_EXAMPLES, seed: int = FEWSHOT_SEED) -> list[dict]:
    """Solved training-split questions (families interleaved): the few-shot examples."""
    from genjo import tinyworld

    problems = tinyworld.sample_problems(n, seed, split="train")
    return [{"family": p.family, "question": p.question, "answer": p.answer} for p in problems]


def write_jsonl(docs: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")


def write_data() -> None:
    """(Re)generate every data file of the offline tasks."""
    write_jsonl(build_choice_docs(), CHOICE_FILE)
    write_jsonl(build_gen_docs(), GEN_FILE)
    write_jsonl(build_prefix_docs(), PREFIX_FILE)
    write_jsonl(build_fewshot_docs(), FEWSHOT_FILE)


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; regenerate it with `python -m eval_tasks.tiny_tasks`.")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _load(path: Path, train: Optional[Path] = None):
    import datasets

    splits = {"test": datasets.Dataset.from_list(_rows(path))}
    if train is not None:
        splits["train"] = datasets.Dataset.from_list(_rows(train))
    return datasets.DatasetDict(splits)


def load_choice(**kwargs):
    """lm-eval ``custom_dataset`` for the multiple-choice tasks (kwargs: task metadata, unused)."""
    return _load(CHOICE_FILE)


def load_gen(**kwargs):
    """lm-eval ``custom_dataset`` for the generation task (kwargs: task metadata, unused)."""
    return _load(GEN_FILE)


def load_prefix(**kwargs):
    """lm-eval ``custom_dataset`` for the task with a ``gen_prefix`` (kwargs: task metadata, unused)."""
    return _load(PREFIX_FILE)


def load_fewshot(**kwargs):
    """lm-eval ``custom_dataset`` for the few-shot task: the generation questions and a training split."""
    return _load(GEN_FILE, train=FEWSHOT_FILE)


def per_family(samples: list[dict], metric: str) -> dict[str, float]:
    """Mean of a per-document metric by family (and 'all'), from lm-eval's logged samples of one task."""
    totals: dict[str, list[float]] = {}
    for sample in samples:
        for key in (sample["doc"]["family"], "all"):
            totals.setdefault(key, []).append(float(sample[metric]))
    return {key: sum(values) / len(values) for key, values in totals.items()}


if __name__ == "__main__":
    write_data()
    print(f"wrote {CHOICE_FILE}, {GEN_FILE}, {PREFIX_FILE} and {FEWSHOT_FILE}")
