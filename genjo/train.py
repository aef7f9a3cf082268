"""Pre-training and supervised fine-tuning of Genjo mask predictors (GUIDELINES.md, SPEC 4).

Pre-training: every token of a packed row is masked independently with probability
p = (1 - eps) t + eps, t ~ U(0, 1) per row; the loss is the cross-entropy at masked slots divided
by p (the 1/t weighting that makes it an upper bound of the negative log-likelihood), summed and
divided by b * L. With probability 0.01 the whole batch is cropped to a random length, so the model
also sees short sequences.

SFT: a chat prompt, then the answer + <|eot_id|>, right-padded with <|endoftext|>. The same noise,
but the prompt is never masked; the padding is part of the answer (maskable, with loss: this is how
the model learns to stop). Each row's loss is divided by its answer length (padding included).

The data are a deterministic function of (seed, step): every process builds the same global batch
and noise and trains on its own slice of rows, so a data-parallel run under ``accelerate launch``
sees exactly the batches of the single-process run, and resuming needs only the step counter.

    python -m genjo.train recipe                    # reproduce the shipped tiny checkpoints
    python -m genjo.train pretrain --run-dir runs/base --steps 2000
    python -m genjo.train sft --init runs/base/final --run-dir runs/sft --steps 2000
    accelerate launch -m genjo.train sft ...        # several GPUs / machines
"""

import argparse
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import tinyworld
from .configuration_genjo import GenjoConfig
from .modeling_genjo import GenjoModelLM
from .tokenizer import build_tokenizer, encode_chat, special_token_ids

STATE_FILE = "training_state.pt"
CURVE_FILE = "learning_curve.jsonl"


@dataclass
class TrainArgs:
    stage: str = "pretrain"  # "pretrain" or "sft"
    run_dir: str = "runs/genjo-tiny"
    init: Optional[str] = None  # checkpoint to start from (SFT: the base model); None = from scratch
    export: Optional[str] = None  # where the final model is saved for use (without optimizer state)
    resume: bool = True  # continue from run_dir/last if it exists
    seed: int = 0
    steps: int = 1000  # length of the learning-rate schedule
    stop_at: Optional[int] = None  # end the run at this step (the schedule still spans `steps`)
    batch_size: int = 64  # rows per step, all processes together
    seq_len: int = 64  # pre-training row length (packed sentences)
    sft_max_len: int = 160  # longest SFT row (prompt + answer + EOS padding)
    sft_long_pad_prob: float = 0.25  # share of SFT batches padded to a random length up to sft_max_len
    sft_plain_text: float = 0.0  # share of SFT rows that are pre-training text (prompt length 0)
    crop_prob: float = 0.01  # pre-training: crop the batch to a random length
    eps: float = 1e-3  # minimum masking probability
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup_steps: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 500
    eval_problems: int = 32  # held-out problems per family at each evaluation
    save_every: int = 500
    family_weights: dict = field(default_factory=lambda: dict(tinyworld.PRETRAIN_WEIGHTS))
    # Architecture of a model trained from scratch (ignored with --init).
    d_model: int = 160
    n_layers: int = 6
    n_heads: int = 5
    mlp_hidden_size: int = 448
    rope_theta: float = 10000.0
    max_sequence_length: int = 1024
    vocab_size: int = 512


# ----------------------------------------------------------------------------- losses


def forward_process(input_ids: torch.Tensor, mask_id: int, eps: float = 1e-3, generator=None):
    """Bernoulli masking of the pre-training forward process.

    input_ids: (b, L) int64. Per row t ~ U(0, 1) and p = (1 - eps) t + eps; each token becomes the
    mask with probability p. Returns (noisy (b, L) int64, masked (b, L) bool, p_mask (b, L) fp32).
    """
    b, length = input_ids.shape
    t = torch.rand(b, generator=generator, device=input_ids.device)
    p_mask = ((1 - eps) * t + eps)[:, None].expand(b, length)
    masked = torch.rand((b, length), generator=generator, device=input_ids.device) < p_mask
    return torch.where(masked, mask_id, input_ids), masked, p_mask


def masked_cross_entropy(model, noisy, targets, masked, p_mask) -> torch.Tensor:
    """Per-slot CE / p at masked slots, zero elsewhere: (b, L) fp32."""
    logits = model(noisy).logits
    ce = F.cross_entropy(logits[masked].float(), targets[masked], reduction="none")
    out = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    out[masked] = ce / p_mask[masked]
    return out


def pretrain_loss(model, input_ids, noisy, masked, p_mask) -> torch.Tensor:
    """sum(CE / p) / (b * L) over the masked slots of a (b, L) batch."""
    return masked_cross_entropy(model, noisy, input_ids, masked, p_mask).sum() / input_ids.numel()


def sft_loss(model, input_ids, prompt_lengths, noisy, masked, p_mask) -> torch.Tensor:
    """Mean over rows of sum(CE / p) / answer_length, the prompt restored and never masked.

    input_ids: (b, L); prompt_lengths: (b,). answer_length counts every column after the prompt,
    the EOS padding included.
    """
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)
    prompt_index = columns[None, :] < prompt_lengths[:, None]
    noisy = torch.where(prompt_index, input_ids, noisy)
    masked = masked & ~prompt_index
    per_slot = masked_cross_entropy(model, noisy, input_ids, masked, p_mask)
    answer_lengths = input_ids.shape[1] - prompt_lengths
    return (per_slot.sum(dim=1) / answer_lengths).mean()


# ----------------------------------------------------------------------------- data


def _step_rng(args: TrainArgs, step: int) -> random.Random:
    return random.Random(f"{args.stage}:{args.seed}:{step}")


def packed_rows(rng: random.Random, tokenizer, n: int, length: int) -> list[list[int]]:
    """n rows of `length` tokens cut from plain-text sentences joined by EOS."""
    eos = tokenizer.eos_token_id
    rows = []
    for _ in range(n):
        sentences = tinyworld.pretraining_documents(rng.getrandbits(63))
        row: list[int] = []
        while len(row) < length:
            row += tokenizer(next(sentences), add_special_tokens=False)["input_ids"] + [eos]
        start = rng.randrange(0, len(row) - length + 1)  # not always at a sentence start
        rows.append(row[start : start + length])
    return rows


def pretrain_batch(args: TrainArgs, tokenizer, step: int) -> torch.Tensor:
    """The global pre-training batch of a step: (batch_size, L) packed sentences separated by EOS."""
    rng = _step_rng(args, step)
    batch = torch.tensor(packed_rows(rng, tokenizer, args.batch_size, args.seq_len), dtype=torch.long)
    if rng.random() < args.crop_prob:
        batch = batch[:, : rng.randint(1, args.seq_len)]
    return batch


def sft_example(tokenizer, problem: tinyworld.Problem) -> tuple[list[int], list[int]]:
    """Prompt ids (chat template with generation prompt) and answer ids (+ <|eot_id|>)."""
    prompt = encode_chat(tokenizer, [{"role": "user", "content": problem.question}], add_generation_prompt=True)
    answer = tokenizer(problem.answer, add_special_tokens=False)["input_ids"]
    return prompt, answer + [tokenizer.convert_tokens_to_ids("<|eot_id|>")]


def sft_batch(args: TrainArgs, tokenizer, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global SFT batch of a step: input ids (b, L) right-padded with EOS, prompt lengths (b,)."""
    rng = _step_rng(args, step)
    families = list(args.family_weights)
    weights = [args.family_weights[f] for f in families]
    examples = [
        sft_example(tokenizer, tinyworld.sample_problem(rng, rng.choices(families, weights)[0], "train"))
        for _ in range(args.batch_size)
    ]
    length = max(len(p) + len(a) for p, a in examples)
    if rng.random() < args.sft_long_pad_prob:
        length = rng.randint(length, max(length, args.sft_max_len))
    else:
        length += rng.randint(0, 8)
    eos = tokenizer.eos_token_id
    rows = [p + a + [eos] * (length - len(p) - len(a)) for p, a in examples]
    prompt_lengths = [len(p) for p, _ in examples]
    # Plain text keeps what pre-training taught (e.g. the capitals that are never asked in chat form);
    # with prompt length 0 the SFT loss of such a row is the pre-training loss.
    n_plain = round(args.sft_plain_text * args.batch_size)
    if n_plain:
        rows[-n_plain:] = packed_rows(rng, tokenizer, n_plain, length)
        prompt_lengths[-n_plain:] = [0] * n_plain
    return torch.tensor(rows, dtype=torch.long), torch.tensor(prompt_lengths)


def step_noise(args: TrainArgs, input_ids: torch.Tensor, mask_id: int, step: int):
    """The forward-process noise of a step, the same on every process."""
    stream = 2 * (args.seed * 1_000_003 + step) + (args.stage == "sft")  # not hash(): salted per process
    generator = torch.Generator().manual_seed(stream)
    return forward_process(input_ids, mask_id, args.eps, generator)


# ----------------------------------------------------------------------------- model and schedule


def new_model(args: TrainArgs, tokenizer) -> GenjoModelLM:
    ids = special_token_ids(tokenizer)
    config = GenjoConfig(
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        n_kv_heads=args.n_heads,
        mlp_hidden_size=args.mlp_hidden_size,
        rope_theta=args.rope_theta,
        max_sequence_length=args.max_sequence_length,
        vocab_size=args.vocab_size,
        embedding_size=args.vocab_size,
        mask_token_id=ids["mask_token_id"],
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"],
        bos_token_id=ids["bos_token_id"],
        eot_token_id=ids["eot_token_id"],
        init_fn="mitchell",
        precision="fp32",
    )
    return GenjoModelLM(config)


def learning_rate(args: TrainArgs, step: int) -> float:
    """Linear warm-up, then cosine decay to min_lr at the last step."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(args: TrainArgs, model: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms and embeddings."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wte" not in n)]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)


def save_checkpoint(model, tokenizer, folder: str, sampler_defaults: Optional[dict] = None) -> None:
    """Hugging Face folder with weights (safetensors), config, modeling code and tokenizer."""
    if sampler_defaults is not None:
        model.config.sampler_defaults = sampler_defaults
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# ----------------------------------------------------------------------------- evaluation


def evaluate(model, tokenizer, args: TrainArgs, rank: int = 0, world_size: int = 1) -> tuple[dict[str, float], int]:
    """Exact-match accuracy per family on fixed held-out problems (this process's share), and its size."""
    from .evaluation import family_accuracy

    problems = tinyworld.sample_problems(args.eval_problems * len(tinyworld.FAMILIES), seed=10_000, split="heldout")
    mine = problems[rank::world_size]
    was_training = model.training
    model.eval()
    acc = family_accuracy(model, tokenizer, mine)
    model.train(was_training)
    return acc, len(mine)


# ----------------------------------------------------------------------------- loop


def train(args: TrainArgs) -> str:
    """Run one stage; returns the folder of the final model."""
    from accelerate import Accelerator

    use_cuda = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision="bf16" if use_cuda else "no", cpu=not use_cuda)
    rank, world = accelerator.process_index, accelerator.num_processes
    if args.batch_size % world:
        raise ValueError(f"batch_size ({args.batch_size}) must be divisible by the number of processes ({world}).")
    run_dir = Path(args.run_dir)
    last_dir = run_dir / "last"

    start_step = 0
    if args.resume and (last_dir / STATE_FILE).exists():
        tokenizer = _load_tokenizer(last_dir)
        model = GenjoModelLM.from_pretrained(last_dir, dtype=torch.float32)
        state = torch.load(last_dir / STATE_FILE, weights_only=True)
        start_step = state["step"]
    elif args.init:
        tokenizer = _load_tokenizer(args.init)
        model = GenjoModelLM.from_pretrained(args.init, dtype=torch.float32)
        state = None
    else:
        torch.manual_seed(args.seed)
        tokenizer = build_tokenizer(vocab_size=args.vocab_size)
        model = new_model(args, tokenizer)
        state = None
    mask_id = model.config.mask_token_id
    optimizer = make_optimizer(args, model)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    model.train()
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "args.json").write_text(json.dumps(asdict(args), indent=2))
        n_params = sum(p.numel() for p in unwrapped.parameters())
        print(f"{args.stage}: {n_params / 1e6:.2f}M parameters, {world} process(es), steps {start_step}..{args.steps}")

    rows = slice(rank * args.batch_size // world, (rank + 1) * args.batch_size // world)
    last_step = min(args.steps, args.stop_at or args.steps)
    progress = tqdm(range(start_step, last_step), initial=start_step, total=last_step,
                    disable=not accelerator.is_main_process, desc=args.stage)  # fmt: skip
    tokens_seen = state["tokens"] if state else 0
    t0, tokens_window = time.perf_counter(), 0
    window_losses: list[float] = []  # mean loss between two records of the learning curve
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args, step)
        if args.stage == "pretrain":
            input_ids = pretrain_batch(args, tokenizer, step)
            noisy, masked, p_mask = step_noise(args, input_ids, mask_id, step)
            batch = [t[rows].to(accelerator.device) for t in (input_ids, noisy, masked, p_mask)]
            loss = pretrain_loss(model, *batch)
        else:
            input_ids, prompt_lengths = sft_batch(args, tokenizer, step)
            noisy, masked, p_mask = step_noise(args, input_ids, mask_id, step)
            batch = [t[rows].to(accelerator.device) for t in (input_ids, prompt_lengths, noisy, masked, p_mask)]
            loss = sft_loss(model, *batch)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        tokens_seen += input_ids.numel()
        tokens_window += input_ids.numel()
        mean_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
        window_losses.append(mean_loss)
        if step % 10 == 0:
            rate = tokens_window / (time.perf_counter() - t0)
            progress.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{rate:.0f}", lr=f"{learning_rate(args, step):.1e}")
            t0, tokens_window = time.perf_counter(), 0

        done = step + 1
        if done % args.eval_every == 0 or done == last_step:
            record = {"stage": args.stage, "step": done, "tokens": tokens_seen,
                      "loss": sum(window_losses) / len(window_losses)}  # fmt: skip
            window_losses = []
            if args.stage == "sft":
                record["accuracy"] = _gathered_eval(unwrapped, tokenizer, args, accelerator)
            if accelerator.is_main_process:
                progress.write(json.dumps(record))
                with open(run_dir / CURVE_FILE, "a") as f:
                    f.write(json.dumps(record) + "\n")
        if done % args.save_every == 0 or done == last_step:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_checkpoint(unwrapped, tokenizer, str(last_dir))
                torch.save({"step": done, "tokens": tokens_seen, "optimizer": optimizer.state_dict()},
                           last_dir / STATE_FILE)  # fmt: skip

    final = args.export or str(run_dir / "final")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from .evaluation import TINY_SAMPLER_DEFAULTS

        save_checkpoint(unwrapped, tokenizer, final, dict(TINY_SAMPLER_DEFAULTS) if args.stage == "sft" else None)
    accelerator.wait_for_everyone()
    return final


def _gathered_eval(model, tokenizer, args, accelerator) -> dict[str, float]:
    """Accuracy over all processes' shares of the held-out problems."""
    acc, n = evaluate(model, tokenizer, args, accelerator.process_index, accelerator.num_processes)
    keys = list(tinyworld.FAMILIES) + ["all"]
    per_family = len(tinyworld.FAMILIES) and n // len(tinyworld.FAMILIES)
    counts = torch.tensor([acc.get(k, 0.0) * (n if k == "all" else per_family) for k in keys], dtype=torch.float64)
    totals = torch.tensor([n if k == "all" else per_family for k in keys], dtype=torch.float64)
    counts = accelerator.reduce(counts.to(accelerator.device), reduction="sum").cpu()
    totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum").cpu()
    return {k: round(float(c / t), 4) for k, c, t in zip(keys, counts, totals)}


def _load_tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


# ----------------------------------------------------------------------------- command line

# The shipped base model is step 500 of a 1,500-step schedule (the training budget of its session).
RECIPE_PRETRAIN = dict(steps=1500, stop_at=500, batch_size=64, seq_len=64, lr=2e-3, warmup_steps=100,
                       eval_every=250, save_every=250)  # fmt: skip
RECIPE_SFT = [  # three stages, each starting from the previous one's final weights
    # 1. all four families
    dict(steps=3500, batch_size=64, lr=1.5e-3, warmup_steps=100, eval_every=500, save_every=250,
         sft_long_pad_prob=0.15, sft_plain_text=0.25,
         family_weights={"capitals": 0.1, "sorting": 0.25, "reversal": 0.3, "addition": 0.35}),
    # 2. more addition, the family learned last
    dict(steps=3000, batch_size=64, lr=1e-3, warmup_steps=100, eval_every=500, save_every=250,
         sft_long_pad_prob=0.15, sft_plain_text=0.25,
         family_weights={"capitals": 0.1, "sorting": 0.15, "reversal": 0.1, "addition": 0.65}),
    # 3. EOS padding up to 600 tokens, so that answers of gen_length 256 or 512 end in confident EOS
    dict(steps=400, batch_size=64, lr=3e-4, warmup_steps=50, eval_every=200, save_every=100,
         sft_max_len=600, sft_long_pad_prob=0.2, sft_plain_text=0.25,
         family_weights={"capitals": 0.1, "sorting": 0.2, "reversal": 0.15, "addition": 0.55}),
]  # fmt: skip


def recipe(run_root: str, export_root: str, seed: int = 0, scale: float = 1.0) -> None:
    """Reproduce the shipped checkpoints: pre-train the base model, then SFT the instruct model.

    scale multiplies every step count (e.g. 0.1 for a quick trial run).
    """

    def scaled(stage: dict) -> dict:
        return {k: int(v * scale) if k in ("steps", "stop_at") else v for k, v in stage.items()}

    base = train(TrainArgs(stage="pretrain", run_dir=f"{run_root}/base", seed=seed,
                           export=f"{export_root}/genjo-tiny-base", **scaled(RECIPE_PRETRAIN)))  # fmt: skip
    init = base
    for number, stage in enumerate(RECIPE_SFT, start=1):
        last = number == len(RECIPE_SFT)
        init = train(TrainArgs(stage="sft", run_dir=f"{run_root}/instruct-{number}", init=init, seed=seed,
                               export=f"{export_root}/genjo-tiny-instruct" if last else None,
                               **scaled(stage)))  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["pretrain", "sft", "recipe"])
    defaults = TrainArgs()
    for f in fields(TrainArgs):
        if f.name in ("stage", "family_weights"):
            continue
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            parser.add_argument(f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=value)
        else:
            kind = {Optional[int]: int, Optional[str]: str}.get(f.type, type(value))
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=value)
    parser.add_argument("--family-weights", type=json.loads, default=None, help='JSON, e.g. {"sorting": 1.0}')
    parser.add_argument("--export-root", default=str(Path(__file__).parent / "checkpoints"), help="recipe only")
    parser.add_argument("--scale", type=float, default=1.0, help="recipe only: multiply the step counts")
    ns = parser.parse_args(argv)
    if ns.stage == "recipe":
        recipe(ns.run_dir, ns.export_root, ns.seed, ns.scale)
        return
    kwargs = {f.name: getattr(ns, f.name) for f in fields(TrainArgs) if f.name not in ("stage", "family_weights")}
    if ns.family_weights:
        kwargs["family_weights"] = ns.family_weights
    print(train(TrainArgs(stage=ns.stage, **kwargs)))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
