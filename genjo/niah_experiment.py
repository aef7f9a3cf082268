"""Context extension reproduced on a CPU: a small Genjo trained at a short context, tested far beyond it.

The task is the needle in a haystack of ``genjo.niah`` (filler sentences of the tiny world, one sentence
"The magic number of <name> is <4 digits>." at any depth, then the question), answered by ``generate()``.

1. Base model: trained from scratch (``genjo.train.train``, SFT rows: the chat prompt never masked, the answer
   masked) on needles whose prompt + answer fit in ``train_length`` tokens; its max_sequence_length is that length.
2. Tested at 1x, 2x, 4x and 8x the trained length (prompt + answer), loaded with
   ``load_model(..., context_length=N, rope_scaling=...)``: (a) "none" (the base unchanged), (b) "ntk" (the
   LongLLaDA law), (c) "diffusion-aware" (UltraLLaDA's law, both lengths doubled): the factor is the law's for
   each target length.
3. (d) The base scaled once for 8x by the diffusion-aware law, then post-trained on rows of 8x tokens packed
   from needle documents (other needles, then the one asked, whose number is the only part scored: the SFT loss;
   ``packed_batches``) under each packing (document masks, EOS, nothing); tested at the same lengths with that
   one base. (The pre-training loss over whole rows, UltraLLaDA's, erased this base model's answers in 100 steps:
   docs/long-context.md.)

    python -m genjo.niah_experiment            # the documented run (tables, JSON, heat map); resumes in its run dir
    python -m genjo.niah_experiment --steps 200 --post-steps 10 --samples 2 --run-dir runs/niah-quick   # a smoke run
"""

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from . import niah
from .cli import run_command
from .long_context import rope_scaling_factor

LAWS = ("none", "ntk", "diffusion-aware")  # (a), (b), (c): the factor of each target length
PACKINGS = ("document", "eod", "concat")  # (d): post-training under each


@dataclass
class ExperimentArgs:
    train_length: int = 128  # tokens (prompt + answer) of the base model's training rows
    multiples: tuple[int, ...] = (1, 2, 4, 8)  # test lengths, in trained lengths
    # The base model
    d_model: int = 64
    n_layers: int = 3
    n_heads: int = 4  # head dim 16
    mlp_hidden_size: int = 192
    rope_theta: float = 10000.0
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    pool: int = 8192  # distinct training needles (drawn with replacement)
    # Post-training at the longest multiple
    post_steps: int = 300
    post_batch_size: int = 8
    post_lr: float = 5e-4
    post_pool: int = 2048  # distinct needle documents packed into the post-training rows
    packings: tuple[str, ...] = PACKINGS
    # The test
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    samples: int = 8  # needles per (length, depth)
    gen_length: int = 8  # the answer's canvas: 4 digits, <|eot_id|>, EOS padding
    digits: int = 4
    seed: int = 0

    @property
    def long_length(self) -> int:
        return max(self.multiples) * self.train_length


def check_experiment_args(args: ExperimentArgs) -> None:
    """ValueError for settings that cannot run, before any training."""
    if args.train_length - args.gen_length < 64:
        raise ValueError(f"train_length - gen_length must be at least 64 prompt tokens (a needle, a question and "
                         f"some filler); got {args.train_length} - {args.gen_length}.")  # fmt: skip
    if not args.multiples or min(args.multiples) < 1:
        raise ValueError(f"multiples must be positive ints (e.g. 1,2,4,8); got {args.multiples}.")
    if args.d_model % args.n_heads or (args.d_model // args.n_heads) % 2:
        raise ValueError(f"d_model / n_heads must be an even head dimension; got {args.d_model} / {args.n_heads}.")
    unknown = set(args.packings) - set(PACKINGS)
    if unknown:
        raise ValueError(f"packings must be among {', '.join(PACKINGS)}; got {sorted(unknown)}.")
    if args.gen_length < args.digits + 1:
        raise ValueError(f"gen_length ({args.gen_length}) must hold the {args.digits} digits and <|eot_id|>.")


def sft_table(tokenizer, needles, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SFT rows of exactly `length` tokens: chat prompt, the number + <|eot_id|>, EOS padding.

    Returns input ids (n, length) int64 and prompt lengths (n,) int64.
    """
    from .train.data import sft_example

    rows, prompt_lengths = [], []
    for needle in needles:
        prompt, answer = sft_example(tokenizer, needle)
        if len(prompt) + len(answer) > length:
            raise ValueError(f"a needle of {len(prompt)} + {len(answer)} tokens does not fit in {length}")
        rows.append(prompt + answer + [tokenizer.eos_token_id] * (length - len(prompt) - len(answer)))
        prompt_lengths.append(len(prompt))
    return torch.tensor(rows, dtype=torch.long), torch.tensor(prompt_lengths, dtype=torch.long)


def base_batches(tokenizer, needles, length: int, batch_size: int, seed: int):
    """step -> (input_ids (batch_size, length), prompt_lengths (batch_size,)): SFT rows drawn from the pool."""
    table, prompt_lengths = sft_table(tokenizer, needles, length)

    def batch(step: int):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        rows = torch.randint(len(table), (batch_size,), generator=generator)
        return table[rows], prompt_lengths[rows]

    return batch


def packed_batches(tokenizer, needles, length: int, batch_size: int, packing: str, seed: int):
    """step -> (input_ids (batch_size, length), prompt_lengths (batch_size,)[, attention_bias]): packed SFT rows.

    A row is needle documents (chat prompt, number, <|eot_id|>) drawn from the pool and joined as `packing` says
    (EOS, or nothing under "concat"), EOS padding, then one more needle whose answer is the row's last tokens and
    the only part masked and scored (the SFT loss). Under "document" the third item is the rows' document-level
    attention mask, (b, 1, L, L) bool: the question sees only its own haystack. The same draws for every packing.
    """
    from .train.data import document_attention_mask, document_separator, sft_example

    pairs = [sft_example(tokenizer, needle) for needle in needles]
    separator, eos = document_separator(tokenizer, packing), tokenizer.eos_token_id
    too_long = [len(p) + len(a) for p, a in pairs if len(p) + len(a) > length]
    if too_long:
        raise ValueError(f"needle documents of {max(too_long)} tokens do not fit in rows of {length}")

    def row(rng: random.Random) -> tuple[list[int], int]:
        prompt, answer = pairs[rng.randrange(len(pairs))]  # the needle asked about
        room = length - len(prompt) - len(answer)
        context: list[int] = []
        while True:
            other_prompt, other_answer = pairs[rng.randrange(len(pairs))]
            if len(context) + len(other_prompt) + len(other_answer) + len(separator) > room:
                break
            context += other_prompt + other_answer + separator
        padding = [eos] * (room - len(context))
        return context + padding + prompt + answer, room + len(prompt)

    def batch(step: int):
        rng = random.Random(f"niah-post:{seed}:{step}")
        rows = [row(rng) for _ in range(batch_size)]
        input_ids = torch.tensor([ids for ids, _ in rows], dtype=torch.long)
        prompt_lengths = torch.tensor([n for _, n in rows], dtype=torch.long)
        if packing == "document":
            return input_ids, prompt_lengths, document_attention_mask(input_ids, eos)
        return input_ids, prompt_lengths

    return batch


def train_base(args: ExperimentArgs, tokenizer, tokenizer_dir: str, run_dir: Path) -> str:
    """The base model (SFT rows of train_length tokens); returns its folder. A finished one is reused."""
    from .train import StepData, TrainArgs, train

    final = run_dir / "base" / "final"
    if (final / "config.json").exists():
        return str(final)
    prompt_max = args.train_length - args.gen_length
    needles = niah.training_needles(tokenizer, args.pool, args.seed, 64, prompt_max, args.digits, progress=True)
    train_args = TrainArgs(
        stage="sft", run_dir=str(run_dir / "base"), seed=args.seed, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, min_lr=args.lr / 20, warmup_steps=args.steps // 20, eval_every=max(1, args.steps // 10),
        save_every=max(1, args.steps // 4), d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
        mlp_hidden_size=args.mlp_hidden_size, rope_theta=args.rope_theta, max_sequence_length=args.train_length,
        vocab_size=max(512, -(-len(tokenizer) // 64) * 64), tokenizer=tokenizer_dir,
    )  # fmt: skip
    data = StepData(base_batches(tokenizer, needles, args.train_length, args.batch_size, args.seed))
    return train(train_args, data=data)


def post_train(args: ExperimentArgs, base: str, tokenizer, needles, packing: str, run_dir: Path) -> str:
    """(d): the base scaled for long_length by the diffusion-aware law, then post-trained on packed SFT rows of
    long_length tokens under `packing` (``packed_batches``); returns its folder. A finished one is reused."""
    from .loading import load_model
    from .train import StepData, TrainArgs, train

    folder = run_dir / f"post-{packing}"
    final = folder / "final"
    if (final / "config.json").exists():
        return str(final)
    scaled = folder / "scaled"
    model = load_model(base, device="cpu", with_tokenizer=False, context_length=args.long_length)
    model.save_pretrained(scaled)
    tokenizer.save_pretrained(scaled)
    train_args = TrainArgs(
        stage="sft", run_dir=str(folder), init=str(scaled), seed=args.seed, steps=args.post_steps,
        batch_size=args.post_batch_size, packing=packing, lr=args.post_lr,
        min_lr=args.post_lr / 10, warmup_steps=max(1, args.post_steps // 10), eval_every=max(1, args.post_steps // 5),
        save_every=args.post_steps,
    )  # fmt: skip
    batches = packed_batches(tokenizer, needles, args.long_length, args.post_batch_size, packing, args.seed)
    return train(train_args, data=StepData(batches))


def test_model(args: ExperimentArgs, folder: str, rope_scaling: Optional[str], progress: bool = True) -> list[dict]:
    """Retrieval accuracy at each multiple of the trained length: one record per multiple.

    rope_scaling: a law applied per target length (load_model's context_length), or None to load the folder as
    it is (a post-trained model: its recorded base serves every length it covers).
    """
    from .loading import load_model

    records = []
    for multiple in args.multiples:
        total = multiple * args.train_length
        if rope_scaling is None:
            model, tokenizer = load_model(folder, device="cpu")
        else:
            model, tokenizer = load_model(folder, device="cpu", context_length=total, rope_scaling=rope_scaling)
        results = niah.run_grid(
            model, tokenizer, [total - args.gen_length], list(args.depths), samples=args.samples, seed=args.seed,
            batch_size=args.samples * len(args.depths), digits=args.digits, progress=progress,
            gen_length=args.gen_length, block_length=args.gen_length, steps=args.gen_length, temperature=0.0,
            remasking="low_confidence",
        )  # fmt: skip
        cells = results["cells"]
        extension = results["rope_extension"] or {}
        records.append(dict(
            multiple=multiple, length=total, factor=float(extension.get("factor", 1.0)), rope_base=results["rope_base"],
            accuracy=sum(c["accuracy"] * c["n"] for c in cells) / sum(c["n"] for c in cells),
            by_depth={f"{c['depth']:g}": c["accuracy"] for c in cells},
            answers=[a for c in cells for a in c["answers"]][:4],
        ))  # fmt: skip
    return records


def method_name(law: str, packing: Optional[str] = None) -> str:
    return f"{law} + post-training ({packing})" if packing else law


def run(args: ExperimentArgs, run_dir: str = "runs/niah_experiment") -> dict:
    """Train, scale, post-train and test; returns the results (also written to run_dir/results.json)."""
    from .tokenizer import build_tokenizer

    check_experiment_args(args)
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size=512)
    tokenizer_dir = str(root / "tokenizer")
    tokenizer.save_pretrained(tokenizer_dir)
    cpu: dict[str, float] = {}
    clock = time.process_time()

    base = train_base(args, tokenizer, tokenizer_dir, root)
    cpu["base training"], clock = time.process_time() - clock, time.process_time()
    methods = {}
    for law in LAWS:
        methods[method_name(law)] = test_model(args, base, law)
    cpu["tests of (a)-(c)"], clock = time.process_time() - clock, time.process_time()

    needles = niah.training_needles(tokenizer, args.post_pool, args.seed + 1, 64, args.long_length - args.gen_length,
                                    args.digits, progress=True)  # fmt: skip
    cpu["post-training needles"], clock = time.process_time() - clock, time.process_time()
    for packing in args.packings:
        folder = post_train(args, base, tokenizer, needles, packing, root)
        cpu[f"post-training ({packing})"], clock = time.process_time() - clock, time.process_time()
        methods[method_name("diffusion-aware", packing)] = test_model(args, folder, None)
        cpu[f"test ({packing})"], clock = time.process_time() - clock, time.process_time()

    results = dict(
        args=asdict(args),
        factors={
            law: [
                rope_scaling_factor(
                    args.train_length,
                    m * args.train_length,
                    args.rope_theta,
                    args.d_model // args.n_heads,
                    diffusion_aware=law == "diffusion-aware",
                )
                for m in args.multiples
            ]
            for law in ("ntk", "diffusion-aware")
        },  # fmt: skip
        post_training_tokens=args.post_steps * args.post_batch_size * args.long_length,
        cpu_seconds={k: round(v, 1) for k, v in cpu.items()},
        methods=methods,
    )
    (root / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def results_table(results: dict) -> str:
    """Markdown: one row per method, one column per test length (accuracy in %, the RoPE factor used)."""
    args = results["args"]
    header = " | ".join(f"{m}x ({m * args['train_length']})" for m in args["multiples"])
    lines = [f"| method | {header} |", "|---" * (len(args["multiples"]) + 1) + "|"]
    for name, records in results["methods"].items():
        cells = " | ".join(f"{100 * r['accuracy']:.0f}% (x{r['factor']:g})" for r in records)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    """Heat map of accuracy: methods down, test lengths across (a small PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args, methods = results["args"], results["methods"]
    grid = [[r["accuracy"] for r in records] for records in methods.values()]
    fig, ax = plt.subplots(figsize=(6.4, 0.8 + 0.42 * len(grid)))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    lengths = [f"{m}x ({m * args['train_length']})" for m in args["multiples"]]
    ax.set_xticks(range(len(lengths)), lengths, fontsize=8)
    ax.set_xlabel("test length: multiple of the trained length (tokens)", fontsize=8)
    ax.set_yticks(range(len(grid)), list(methods), fontsize=8)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title(f"needle retrieval beyond the trained length ({args['train_length']} tokens)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    defaults = ExperimentArgs()
    parser = argparse.ArgumentParser(prog="python -m genjo.niah_experiment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--run-dir", default="runs/niah_experiment", help="models, results.json (default: %(default)s)")
    parser.add_argument("--plot", default=None, help="heat map PNG (default: RUN_DIR/niah_extension.png)")
    for f in fields(ExperimentArgs):
        value = getattr(defaults, f.name)
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(value, tuple):
            kind = type(value[0])
            parser.add_argument(flag, default=",".join(str(v) for v in value),
                                type=lambda text, kind=kind: tuple(kind(x) for x in text.split(",")),
                                help="comma-separated (default: %(default)s)")  # fmt: skip
        else:
            parser.add_argument(flag, type=type(value), default=value, help="(default: %(default)s)")
    ns = parser.parse_args(argv)
    args = ExperimentArgs(**{f.name: getattr(ns, f.name) for f in fields(ExperimentArgs)})
    check_experiment_args(args)
    torch.set_num_threads(1)  # a small model: one thread is as fast as several and leaves the other cores free
    results = run(args, ns.run_dir)
    plot(results, ns.plot or str(Path(ns.run_dir) / "niah_extension.png"))
    tqdm.write(results_table(results))
    tqdm.write("CPU seconds: " + json.dumps(results["cpu_seconds"]))


if __name__ == "__main__":
    run_command(main, prog="python -m genjo.niah_experiment")
