"""The reversal curse, reproduced: Genjo against an autoregressive twin on facts taught in one direction.

A language model trained on "A is B" often cannot answer "B is ... A" (the reversal curse of
autoregressive models). A masked diffusion model is trained to predict any masked part of a sentence
from the rest, so it also learns to recover A from B (arXiv 2502.09992, 2410.18514).

The experiment. People with invented names each get an invented code word (a random one-to-one
pairing per seed). Training text is plain sentences, one per row. Every fact is stated in the three
FORWARD_TEMPLATES, the name always first ("Agent Zorvik's code word is plimsa."). Half of the people
("paired") are also stated in the REVERSE_TEMPLATES ("The code word plimsa belongs to agent Zorvik."),
so that a model can learn what the reverse question means. For the other half ("test"), the code word
never comes first. Both models are then asked about the test people, in both directions:

    forward   "Agent Zorvik's code word is"           -> " plimsa."
    reverse   "The code word plimsa belongs to agent"  -> " Zorvik."

A test person's reverse sentence never appears in training (``check_no_leak``). Chance level of a
reverse answer is one over the number of people.

Both models are trained by ``genjo.train.train`` on the same batches (same rows, same order, same
token count), with the same tokenizer, architecture and parameter count; only ``--objective`` differs:
``mdm`` (Genjo: bidirectional, masked-diffusion loss) or ``ar`` (the twin: causal mask, next-token
loss). Genjo answers with ``generate()``; the twin with greedy next-token decoding
(:func:`greedy_decode`).

    python -m genjo.reversal                        # 3 seeds (~12 min of one CPU core): table, plot in runs/reversal/
    python -m genjo.reversal --seeds 0 --steps 300  # a quick check of the pipeline
"""

import argparse
import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from .cli import run_command
from .settings import add_renamed_argument

# Every fact is stated in several ways, the name always before the code word (the forward direction);
# facts stated once only would not carry over to any other wording, in either direction.
FORWARD_TEMPLATES = (
    "Agent {x}'s code word is {y}.",
    "The code word of agent {x} is {y}.",
    "Agent {x} uses the code word {y}.",
)
# The code word before the name: trained on the paired facts only.
REVERSE_TEMPLATES = (
    "The code word {y} belongs to agent {x}.",
    "The code word {y} is used by agent {x}.",
)
FORWARD_PROMPT = "Agent {x}'s code word is"  # the answer is " {y}."
REVERSE_PROMPT = "The code word {y} belongs to agent"  # the answer is " {x}."

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")


@dataclass(frozen=True)
class Fact:
    """One person (x) and their code word (y); ``paired`` facts are also taught in the reverse template."""

    x: str
    y: str
    paired: bool


def invented_words(n: int, seed: int, capitalize: bool) -> list[str]:
    """n distinct pronounceable words of three syllables (CV CV CV), deterministic per seed."""
    rng = random.Random(f"reversal-words:{seed}")
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(3)))
    ordered = sorted(words)
    rng.shuffle(ordered)
    return [w.capitalize() for w in ordered] if capitalize else ordered


def vocabulary(n_people: int) -> tuple[list[str], list[str]]:
    """The fixed names and code words of the experiment (the same for every seed, so one tokenizer)."""
    names = invented_words(n_people, seed=1, capitalize=True)
    words = [w for w in invented_words(2 * n_people, seed=2, capitalize=False) if w.capitalize() not in names]
    return names, words[:n_people]


def make_facts(n_people: int, seed: int) -> list[Fact]:
    """A random one-to-one pairing of names with code words; the first half of a random order is paired."""
    names, words = vocabulary(n_people)
    rng = random.Random(f"reversal-facts:{seed}")
    words = list(words)
    rng.shuffle(words)
    order = list(range(n_people))
    rng.shuffle(order)
    paired = set(order[: n_people // 2])
    return [Fact(x, y, i in paired) for i, (x, y) in enumerate(zip(names, words))]


def training_sentences(facts: list[Fact]) -> list[str]:
    """Every training sentence: each fact in the forward templates, the paired facts also in the reverse ones."""
    sentences = [t.format(x=f.x, y=f.y) for f in facts for t in FORWARD_TEMPLATES]
    return sentences + [t.format(x=f.x, y=f.y) for f in facts if f.paired for t in REVERSE_TEMPLATES]


def questions(facts: list[Fact], direction: str) -> list[tuple[str, str]]:
    """(prompt, expected answer) for each test fact (the facts never taught in reverse)."""
    test = [f for f in facts if not f.paired]
    if direction == "forward":
        return [(FORWARD_PROMPT.format(x=f.x), f.y) for f in test]
    if direction == "reverse":
        return [(REVERSE_PROMPT.format(y=f.y), f.x) for f in test]
    raise ValueError(f"direction={direction!r}: use 'forward' or 'reverse'.")


def check_no_leak(facts: list[Fact]) -> None:
    """ValueError if a reverse question about a test fact, or any sentence that names a test fact's code
    word before its name, is part of the training data."""
    sentences = training_sentences(facts)
    for prompt, _ in questions(facts, "reverse"):
        if any(prompt in s for s in sentences):
            raise ValueError(f"the reverse question {prompt!r} is in the training data")
    for f in facts:
        if not f.paired:
            for s in sentences:
                if f" {f.x}" in s and f" {f.y}" in s and s.index(f" {f.y}") < s.index(f" {f.x}"):
                    raise ValueError(f"the training sentence {s!r} states a test fact code word first")


def build_experiment_tokenizer(n_people: int):
    """A byte-level BPE (genjo.tokenizer's builder) that makes every name and code word one token."""
    from .tokenizer import build_tokenizer

    names, words = vocabulary(n_people)
    templates = [t.format(x=n, y=w) for n, w in zip(names, words) for t in FORWARD_TEMPLATES + REVERSE_TEMPLATES]
    # The sentences pair name i with word i, which no seed's facts need to follow: the tokenizer learns
    # spellings only. Each sentence three times so that every merge passes min_frequency.
    tokenizer = build_tokenizer(corpus=templates * 3, vocab_size=4096)
    for word in names + words:
        if len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) != 1:
            raise RuntimeError(f"{word!r} is not a single token of the experiment tokenizer")
    return tokenizer


def fact_batches(tokenizer, facts: list[Fact], batch_size: int, seq_len: int, seed: int):
    """step -> (batch_size, seq_len) int64: training sentences drawn uniformly, each right-padded with EOS.

    A pure function of (seed, step), so both objectives see exactly the same rows.
    """
    eos = tokenizer.eos_token_id
    rows = []
    for sentence in training_sentences(facts):
        ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
        if len(ids) >= seq_len:
            raise ValueError(f"seq_len={seq_len} is too short for {sentence!r} ({len(ids)} tokens + EOS)")
        rows.append(ids + [eos] * (seq_len - len(ids)))
    table = torch.tensor(rows, dtype=torch.long)

    def batch(step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return table[torch.randint(len(rows), (batch_size,), generator=generator)]

    return batch


# ----------------------------------------------------------------------------- answering


def _left_padded(tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    length = max(len(i) for i in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (length - len(i)) + i for i in ids], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (length - len(i)) + [1] * len(i) for i in ids], dtype=torch.long, device=device)
    return input_ids, mask


@torch.no_grad()
def greedy_decode(model, prompt: torch.Tensor, attention_mask: Optional[torch.Tensor], max_new_tokens: int):
    """Plain autoregressive greedy decoding: append the argmax next token, max_new_tokens times.

    prompt: (B, L) int64, left-padded; attention_mask (B, L) or None. Returns (B, L + max_new_tokens):
    the prompt, then the generated tokens (a finished row keeps appending, callers cut at EOS). Each step
    recomputes the whole sequence (no KV cache: the twin is tiny and the answers a few tokens long).
    """
    x = prompt
    mask = attention_mask if attention_mask is not None else torch.ones_like(prompt)
    for _ in range(max_new_tokens):
        logits = model(x, attention_mask=mask).logits[:, -1]  # (B, V)
        x = torch.cat([x, logits.argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return x


def first_phrase(text: str) -> str:
    """The answer part of a completion: up to the first period (the templates end facts with one)."""
    return text.split(".")[0].strip()


def complete(
    model,
    tokenizer,
    prompts: list[str],
    gen_length: int = 4,
    batch_size: int = 256,
    progress: bool = False,
    **generate_kwargs,
) -> list[str]:
    """Decoded completions (special tokens skipped) of plain-text prompts, left-padded in batches.

    Genjo answers with generate() (steps = block_length = gen_length unless generate_kwargs say otherwise);
    a causal model (config.causal, the AR twin) with greedy_decode().
    """
    from .sampling import generate

    kwargs = {"steps": gen_length, "block_length": gen_length, **generate_kwargs}
    answers = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="completing", disable=not progress):
        ids, mask = _left_padded(tokenizer, prompts[start : start + batch_size], model.device)
        if getattr(model.config, "causal", False):
            out = greedy_decode(model, ids, mask, gen_length)
        else:
            out = generate(model, ids, mask, gen_length=gen_length, **kwargs)
        answers += tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    return answers


def accuracy(model, tokenizer, facts: list[Fact], direction: str) -> float:
    """Exact-match accuracy of the completions of the test facts' questions in one direction."""
    pairs = questions(facts, direction)
    answers = [first_phrase(a) for a in complete(model, tokenizer, [p for p, _ in pairs])]
    return sum(a == expected for a, (_, expected) in zip(answers, pairs)) / len(pairs)


# ----------------------------------------------------------------------------- the experiment


@dataclass
class ExperimentArgs:
    seeds: tuple[int, ...] = (0, 1, 2)
    people: int = 100
    steps: int = 4000
    batch_size: int = 64
    seq_len: int = 12
    lr: float = 3e-3
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden_size: int = 192


def train_one(args: ExperimentArgs, tokenizer, facts: list[Fact], objective: str, seed: int, run_dir: str):
    """Train one model with genjo.train.train on the facts; returns it loaded in eval mode."""
    from .modeling_genjo import GenjoModelLM
    from .train import StepData, TrainArgs, train

    vocab_size = -(-len(tokenizer) // 64) * 64
    tokenizer_dir = os.path.join(run_dir, "tokenizer")
    tokenizer.save_pretrained(tokenizer_dir)
    train_args = TrainArgs(
        stage="pretrain", objective=objective, run_dir=run_dir, resume=False, seed=seed, steps=args.steps,
        batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, min_lr=args.lr / 20,
        warmup_steps=args.steps // 20, eval_every=args.steps, save_every=args.steps, d_model=args.d_model,
        n_layers=args.n_layers, n_heads=args.n_heads, mlp_hidden_size=args.mlp_hidden_size,
        max_sequence_length=64, vocab_size=vocab_size, tokenizer=tokenizer_dir,
    )  # fmt: skip
    batches = fact_batches(tokenizer, facts, args.batch_size, args.seq_len, seed)
    final = train(train_args, data=StepData(lambda step: (batches(step), None)))
    return GenjoModelLM.from_pretrained(final, dtype=torch.float32).eval()


def run(args: ExperimentArgs, out_json: Optional[str] = None, work_dir: Optional[str] = None) -> list[dict]:
    """Train Genjo and the AR twin for every seed; returns one record per (seed, model)."""
    tokenizer = build_experiment_tokenizer(args.people)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(work_dir or tmp)
        for seed in tqdm(args.seeds, desc="seeds"):
            facts = make_facts(args.people, seed)
            check_no_leak(facts)
            for name, objective in (("Genjo", "mdm"), ("AR twin", "ar")):
                model = train_one(args, tokenizer, facts, objective, seed, str(root / f"{objective}-seed{seed}"))
                record = {"seed": seed, "model": name, "parameters": sum(p.numel() for p in model.parameters()),
                          "forward": accuracy(model, tokenizer, facts, "forward"),
                          "reverse": accuracy(model, tokenizer, facts, "reverse")}  # fmt: skip
                tqdm.write(json.dumps(record))
                records.append(record)
                if out_json:  # written after every model, so an interrupted run keeps what it measured
                    Path(out_json).write_text(json.dumps({"args": vars(args), "records": records}, indent=2) + "\n")
    return records


def results_table(records: list[dict]) -> str:
    """Markdown table: one row per seed and a mean row; forward and reverse accuracy (%) of both models."""
    seeds = sorted({r["seed"] for r in records})
    cell = {(r["seed"], r["model"]): r for r in records}
    lines = ["| seed | Genjo forward | Genjo reverse | AR twin forward | AR twin reverse |", "|---|---|---|---|---|"]
    means = {k: [] for k in ("Gf", "Gr", "Af", "Ar")}
    for seed in seeds:
        g, a = cell.get((seed, "Genjo")), cell.get((seed, "AR twin"))
        values = [g and g["forward"], g and g["reverse"], a and a["forward"], a and a["reverse"]]
        for key, value in zip(means, values):
            if value is not None:
                means[key].append(value)
        lines.append(f"| {seed} | " + " | ".join("" if v is None else f"{100 * v:.1f}" for v in values) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{100 * sum(v) / len(v):.1f}**" if v else "" for v in means.values())
                 + " |")  # fmt: skip
    return "\n".join(lines)


def plot(records: list[dict], out_png: str, chance: Optional[float] = None) -> None:
    """Bars of the mean forward and reverse accuracy of both models, with each seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    models, directions = ("Genjo", "AR twin"), ("forward", "reverse")
    colors = {"Genjo": "tab:blue", "AR twin": "tab:orange"}
    for i, direction in enumerate(directions):
        for j, model in enumerate(models):
            values = [100 * r[direction] for r in records if r["model"] == model]
            if not values:
                continue
            x = i + (j - 0.5) * 0.38
            ax.bar(x, sum(values) / len(values), width=0.36, color=colors[model], label=model if i == 0 else None)
            ax.scatter([x] * len(values), values, color="black", s=12, zorder=3)
    if chance is not None:
        ax.axhline(100 * chance, color="gray", linestyle=":", linewidth=1, label="chance")
    ax.set_xticks(range(len(directions)))
    ax.set_xticklabels(["forward: name -> code word", "reverse: code word -> name"])
    ax.set_ylabel("exact match on test facts (%)")
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("Facts taught in one direction only (bars: mean; dots: seeds)", fontsize=10)
    ax.legend(loc="upper center", ncol=3, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png)


def main(argv=None) -> None:
    defaults = ExperimentArgs()
    parser = argparse.ArgumentParser(prog="python -m genjo.reversal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=list(defaults.seeds), help="training seeds (default: %(default)s)"
    )
    parser.add_argument(
        "--people", type=int, default=defaults.people, help="facts, half of them test facts (default: %(default)s)"
    )
    parser.add_argument(
        "--steps", type=int, default=defaults.steps, help="training steps of each model (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="rows (sentences) per step (default: %(default)s)"
    )
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--d-model", type=int, default=defaults.d_model, help="hidden size (default: %(default)s)")
    parser.add_argument("--n-layers", type=int, default=defaults.n_layers, help="blocks (default: %(default)s)")
    parser.add_argument("--n-heads", type=int, default=defaults.n_heads, help="attention heads (default: %(default)s)")
    parser.add_argument(
        "--mlp-hidden-size",
        type=int,
        default=defaults.mlp_hidden_size,
        help="SwiGLU hidden size (default: %(default)s)",
    )
    add_renamed_argument(
        parser,
        "--output",
        "--out-json",
        default="runs/reversal/results.json",
        help="JSON of the per-seed accuracies ('' for none; default: %(default)s)",
    )
    parser.add_argument(
        "--plot",
        default="runs/reversal/reversal.png",
        help="bar chart of the results ('' for none; the repository's picture is imgs/reversal.png; "
        "default: %(default)s)",
    )
    parser.add_argument("--work-dir", default=None, help="keep the trained models here (default: a temporary folder)")
    parser.add_argument("--report", nargs="+", default=None, metavar="RESULTS_JSON",
                        help="train nothing: merge these --output files (e.g. seeds run in parallel) into the "
                             "table and the plot (default: train)")  # fmt: skip
    ns = parser.parse_args(argv)
    if ns.report:
        saved = [json.loads(Path(path).read_text()) for path in ns.report]
        records = sorted((r for s in saved for r in s["records"]), key=lambda r: (r["seed"], r["model"] != "Genjo"))
        print(results_table(records))
        if ns.plot:
            Path(ns.plot).parent.mkdir(parents=True, exist_ok=True)
            plot(records, ns.plot, chance=1 / saved[0]["args"]["people"])
            print(f"\nplot: {ns.plot}")
        return
    args = ExperimentArgs(seeds=tuple(ns.seeds), people=ns.people, steps=ns.steps, batch_size=ns.batch_size,
                          lr=ns.lr, d_model=ns.d_model, n_layers=ns.n_layers, n_heads=ns.n_heads,
                          mlp_hidden_size=ns.mlp_hidden_size)  # fmt: skip
    if ns.output:
        Path(ns.output).parent.mkdir(parents=True, exist_ok=True)
    records = run(args, ns.output, ns.work_dir)
    n_test = args.people - args.people // 2
    print(f"\n{args.people} people, {n_test} test facts (reverse never trained); {records[0]['parameters']:,} "
          f"parameters per model; {args.steps} steps of {args.batch_size} rows\n")  # fmt: skip
    print(results_table(records))
    if ns.plot:
        Path(ns.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(records, ns.plot, chance=1 / args.people)
        print(f"\nplot: {ns.plot}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_command(main, prog="python -m genjo.reversal")
