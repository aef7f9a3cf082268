"""Pre-training and supervised fine-tuning of Genjo mask predictors (GUIDELINES.md, "Training recipe").

Pre-training: every token of a packed row is masked independently with probability
p = (1 - eps) t + eps, t ~ U(0, 1) per row; the loss is the cross-entropy at masked slots divided
by p (the 1/t weighting that makes it an upper bound of the negative log-likelihood), summed and
divided by b * L. With probability 0.01 the whole batch is cropped to a random length, so the model
also sees short sequences.

SFT: a chat prompt, then the answer + <|eot_id|>, right-padded with <|endoftext|>. The same noise,
but the prompt is never masked; the padding is part of the answer (maskable, with loss: this is how
the model learns to stop). Each row's loss is divided by its answer length (padding included).

Data: the synthetic tiny world by default, or your JSON-lines files with --data (genjo/data.py):
``{"text": ...}`` lines for pre-training, ``{"messages": [...]}`` lines for SFT. Every process builds
the same global batch and noise and trains on its own slice of rows, so a data-parallel run under
``accelerate launch`` sees exactly the batches of the single-process run, and --resume continues with
exactly the next batch (the step counter, the optimizer and the position in the data files are saved).

    python -m genjo.train recipe                    # re-train the tiny checkpoints into runs/genjo-tiny
    python -m genjo.train pretrain --data "corpus/*.jsonl" --run-dir runs/base --steps 2000
    python -m genjo.train sft --data chats.jsonl --init runs/base/final --run-dir runs/sft --steps 2000
    accelerate launch --config_file configs/fsdp_8b.yaml -m genjo.train sft ...   # the 8B on 8 GPUs
    python -m genjo.train pretrain --objective ar ...  # the autoregressive twin (causal mask, next token)
"""

import argparse
import functools
import json
import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import tinyworld
from .chat_format import encode_chat
from .configuration_genjo import GenjoConfig
from .loading import load_config, load_tokenizer
from .modeling_genjo import GenjoModelLM
from .tokenizer import build_tokenizer, special_token_ids

STATE_FILE = "training_state.pt"
CURVE_FILE = "learning_curve.jsonl"


@dataclass
class TrainArgs:
    stage: str = "pretrain"  # "pretrain" or "sft"
    # "mdm": the masked-diffusion losses. "ar": a causal model on the next-token loss, the autoregressive
    # twin the reversal experiment compares against (genjo/reversal.py); same data, same architecture.
    objective: str = "mdm"
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
    # Your data (genjo/data.py); without --data the synthetic tiny world is used.
    data: Optional[str] = None  # JSON-lines file or glob: {"text": ...} (pretrain) or {"messages": [...]} (sft)
    eval_data: Optional[str] = None  # held-out file for the validation loss (default: a split of --data)
    eval_fraction: float = 0.01  # share of --data lines held out for validation when no --eval-data
    eval_rows: int = 128  # rows (pretrain) or prompt/answer pairs (sft) in the validation set
    tokenizer: Optional[str] = None  # tokenizer folder or hub id (default: the --init checkpoint's)
    shuffle_buffer: int = 1000  # lines drawn at random from a buffer of this size (0: file order)
    sft_turns: str = "sample"  # multi-turn: one assistant turn per conversation per epoch, or "all"
    # Scale
    grad_accum: int = 1  # micro-batches per step on each process (batch_size = processes x grad_accum x micro)
    gradient_checkpointing: bool = False  # recompute each block's activations in the backward pass
    mixed_precision: str = "auto"  # "bf16", "no" (fp32), or "auto": bf16 on CUDA, fp32 on CPU


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


def ar_loss(model, input_ids, prompt_lengths=None) -> torch.Tensor:
    """Next-token cross-entropy of a causal model (the autoregressive twin), mean over predicted slots.

    input_ids: (b, L) int64. Column j's logits predict token j + 1. With prompt_lengths (b,) (SFT),
    only answer tokens (columns >= the prompt length, EOS padding included) are predicted.
    """
    logits = model(input_ids).logits[:, :-1].float()  # (b, L - 1, V)
    targets = input_ids[:, 1:]
    if prompt_lengths is not None:
        columns = torch.arange(1, input_ids.shape[1], device=input_ids.device)
        targets = targets.masked_fill(columns[None, :] < prompt_lengths[:, None], -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def _ar_loss_fn(stage: str):
    """ar_loss called with the arguments of pretrain_loss / sft_loss (it does not use the masking noise)."""
    if stage == "pretrain":
        return lambda model, input_ids, *noise: ar_loss(model, input_ids)
    return lambda model, input_ids, prompt_lengths, *noise: ar_loss(model, input_ids, prompt_lengths)


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
    rows, prompt_lengths = padded_sft_rows(args, rng, examples, tokenizer.eos_token_id)
    # Plain text keeps what pre-training taught (e.g. the capitals that are never asked in chat form);
    # with prompt length 0 the SFT loss of such a row is the pre-training loss.
    n_plain = round(args.sft_plain_text * args.batch_size)
    if n_plain:
        rows[-n_plain:] = packed_rows(rng, tokenizer, n_plain, len(rows[0]))
        prompt_lengths[-n_plain:] = [0] * n_plain
    return torch.tensor(rows, dtype=torch.long), torch.tensor(prompt_lengths)


def padded_sft_rows(args: TrainArgs, rng: random.Random, examples, eos: int) -> tuple[list, list]:
    """Rows prompt + answer + EOS padding, all of one length, and the prompt lengths.

    The length is the longest example plus 0-8 tokens, or (with probability sft_long_pad_prob) a random
    length up to sft_max_len, so that the model learns to fill long canvases with EOS.
    """
    length = max(len(p) + len(a) for p, a in examples)
    if rng.random() < args.sft_long_pad_prob:
        length = rng.randint(length, max(length, args.sft_max_len))
    else:
        length += rng.randint(0, 8)
    rows = [p + a + [eos] * (length - len(p) - len(a)) for p, a in examples]
    return rows, [len(p) for p, _ in examples]


def step_noise(args: TrainArgs, input_ids: torch.Tensor, mask_id: int, step: int):
    """The forward-process noise of a step, the same on every process."""
    stream = 2 * (args.seed * 1_000_003 + step) + (args.stage == "sft")  # not hash(): salted per process
    generator = torch.Generator().manual_seed(stream)
    return forward_process(input_ids, mask_id, args.eps, generator)


class TinyWorldData:
    """The synthetic tiny world: each global batch is a function of (seed, step), nothing to save."""

    def __init__(self, args: TrainArgs, tokenizer):
        self.args, self.tokenizer = args, tokenizer

    def batch(self, step: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.args.stage == "pretrain":
            return pretrain_batch(self.args, self.tokenizer, step), None
        return sft_batch(self.args, self.tokenizer, step)

    def eval_batches(self) -> list:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class FileData:
    """Global batches read from JSON-lines files (genjo/data.py), in order; the read position is saved.

    pretrain: (batch_size, seq_len) rows packed from documents joined by EOS, cropped to a random length
    with probability crop_prob. sft: prompt + answer + EOS padding rows and their prompt lengths.
    """

    def __init__(self, args: TrainArgs, tokenizer):
        from . import data

        self.args, self.tokenizer = args, tokenizer
        key = "text" if args.stage == "pretrain" else "messages"
        files = data.data_files(args.data)
        fraction = 0.0 if args.eval_data else args.eval_fraction
        train_stream = data.JsonlStream(files, key, keep=lambda line: not data.is_held_out(line, fraction),
                                        shuffle_buffer=args.shuffle_buffer, seed=args.seed)  # fmt: skip
        if args.eval_data:
            eval_stream = data.JsonlStream(data.data_files(args.eval_data), key, loop=False)
        elif fraction > 0:
            eval_stream = data.JsonlStream(files, key, keep=lambda line: data.is_held_out(line, fraction), loop=False)
        else:
            eval_stream = None
        if args.stage == "pretrain":
            self.reader = data.PackedRows(train_stream, tokenizer, args.seq_len)
            self.eval_reader = eval_stream and data.PackedRows(eval_stream, tokenizer, args.seq_len)
        else:
            self.reader = data.ChatPairs(train_stream, tokenizer, args.sft_max_len, args.sft_turns, args.seed)
            self.eval_reader = eval_stream and data.ChatPairs(eval_stream, tokenizer, args.sft_max_len, "all")
        self._eval_batches = None

    def batch(self, step: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        rng = _step_rng(self.args, step)
        if self.args.stage == "pretrain":
            batch = torch.tensor(self.reader.rows(self.args.batch_size), dtype=torch.long)
            if rng.random() < self.args.crop_prob:
                batch = batch[:, : rng.randint(1, self.args.seq_len)]
            return batch, None
        rows, prompt_lengths = padded_sft_rows(self.args, rng, self.reader.pairs(self.args.batch_size),
                                               self.tokenizer.eos_token_id)  # fmt: skip
        return torch.tensor(rows, dtype=torch.long), torch.tensor(prompt_lengths)

    def eval_batches(self) -> list[tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]]:
        """The validation set as global batches of batch_size rows: (input_ids, prompt_lengths, weights).

        The last batch is filled up with copies of a row of weight 0, so that every process gets the
        same number of rows whatever the number of processes.
        """
        if self.eval_reader is None:
            return []
        if self._eval_batches is None:
            self._eval_batches = self._read_eval_batches()
        return self._eval_batches

    def _read_eval_batches(self) -> list:
        n, size, eos = self.args.eval_rows, self.args.batch_size, self.tokenizer.eos_token_id
        if self.args.stage == "pretrain":
            examples = [([], row) for row in self.eval_reader.rows(n)]
        else:
            examples = self.eval_reader.pairs(n)
        batches = []
        for start in range(0, len(examples), size):
            chunk = examples[start : start + size]
            weights = [1.0] * len(chunk) + [0.0] * (size - len(chunk))
            chunk = chunk + [chunk[0]] * (size - len(chunk))
            length = max(len(p) + len(a) for p, a in chunk)
            rows = [p + a + [eos] * (length - len(p) - len(a)) for p, a in chunk]
            prompt_lengths = torch.tensor([len(p) for p, _ in chunk]) if self.args.stage == "sft" else None
            batches.append((torch.tensor(rows, dtype=torch.long), prompt_lengths, torch.tensor(weights)))
        return batches

    def state_dict(self) -> dict:
        return self.reader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.reader.load_state_dict(state)


# ----------------------------------------------------------------------------- model and schedule


def new_model(args: TrainArgs, tokenizer) -> GenjoModelLM:
    ids = special_token_ids(tokenizer)
    missing = [name for name, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"The tokenizer lacks the special tokens of {missing}; Genjo needs those of "
                         "genjo/tokenizer.py (SPECIAL_TOKENS), e.g. <|mdm_mask|> for the mask.")  # fmt: skip
    if len(tokenizer) > args.vocab_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but --vocab-size is {args.vocab_size}; "
                         f"pass --vocab-size {len(tokenizer)} or more.")  # fmt: skip
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
        causal=args.objective == "ar",
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


def enable_gradient_checkpointing(model: GenjoModelLM) -> None:
    """Recompute each GenjoBlock's activations in the backward pass instead of keeping them.

    Memory for activations drops from one set per block to one block's worth, for about one more
    forward pass of compute. Gradients are unchanged.
    """
    from torch.utils.checkpoint import checkpoint

    def checkpointed(forward, *args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    for block in model.model.transformer.blocks:
        block.forward = functools.partial(checkpointed, block.forward)


def save_checkpoint(model, tokenizer, folder: str, sampler_defaults: Optional[dict] = None, state_dict=None) -> None:
    """Hugging Face folder with weights (safetensors), config, modeling code and tokenizer.

    state_dict: the full weights when the model is sharded (FSDP), else None (the model's own).
    """
    if sampler_defaults is not None:
        model.config.sampler_defaults = sampler_defaults
    model.save_pretrained(folder, state_dict=state_dict)
    tokenizer.save_pretrained(folder)


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    model, tokenizer, args: TrainArgs, rank: int = 0, world_size: int = 1, progress: bool = False
) -> tuple[dict[str, float], int]:
    """Exact-match accuracy per family on fixed held-out problems (this process's share), and its size."""
    from .evaluation import answer_questions

    problems = tinyworld.sample_problems(args.eval_problems * len(tinyworld.FAMILIES), seed=10_000, split="heldout")
    mine = problems[rank::world_size]
    was_training = model.training
    model.eval()
    correct, total = {}, {}
    chunks = range(0, len(mine), 64)
    for start in tqdm(chunks, desc="held-out accuracy", leave=False, disable=not progress):
        chunk = mine[start : start + 64]
        answers = answer_questions(model, tokenizer, [p.question for p in chunk], **tinyworld.SAMPLER_DEFAULTS)
        for problem, answer in zip(chunk, answers):
            for key in (problem.family, "all"):
                total[key] = total.get(key, 0) + 1
                correct[key] = correct.get(key, 0) + (answer == problem.answer)
    model.train(was_training)
    return {key: correct[key] / total[key] for key in total}, len(mine)


@torch.no_grad()
def validation_loss(model, batches, args: TrainArgs, mask_id: int, accelerator, progress: bool = False) -> float:
    """The negative ELBO in nats per token on the validation set (fixed noise): an upper bound of the NLL.

    pretrain: sum(CE / p) over masked slots / tokens. sft: the same over answer slots (prompt restored,
    never masked) / answer tokens, the EOS padding to the batch's longest answer included.
    batches: global (input_ids (b, L), prompt_lengths (b,) or None, weights (b,)) from FileData.eval_batches.
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    rows = slice(rank * args.batch_size // world, (rank + 1) * args.batch_size // world)
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64)  # weighted nats, weighted tokens
    for index, (input_ids, prompt_lengths, weights) in enumerate(
        tqdm(batches, desc="validation loss", leave=False, disable=not progress)
    ):
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + index)  # the same noise at every eval
        noisy, masked, p_mask = forward_process(input_ids, mask_id, args.eps, generator)
        if prompt_lengths is None:
            prompt_lengths = torch.zeros(input_ids.shape[0], dtype=torch.long)
        prompt = torch.arange(input_ids.shape[1])[None, :] < prompt_lengths[:, None]
        noisy, masked = torch.where(prompt, input_ids, noisy), masked & ~prompt
        tensors = [t[rows] for t in (input_ids, noisy, masked, p_mask, prompt_lengths, weights)]
        for part in zip(*(t.chunk(args.grad_accum) for t in tensors)):
            ids, noisy_, masked_, p_, prompt_len, w = (t.to(accelerator.device) for t in part)
            per_slot = masked_cross_entropy(model, noisy_, ids, masked_, p_)  # (b, L)
            totals[0] += (per_slot.sum(1).double() * w).sum().item()
            totals[1] += ((ids.shape[1] - prompt_len).double() * w).sum().item()
    model.train(was_training)
    totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum").cpu()
    return float(totals[0] / totals[1])


# ----------------------------------------------------------------------------- loop


def check_args(args: TrainArgs, world_size: int = 1) -> None:
    """ValueError for settings that cannot work; a warning for a schedule that never reaches --lr."""
    if args.stage not in ("pretrain", "sft"):
        raise ValueError(f"stage must be 'pretrain' or 'sft', not {args.stage!r}.")
    if args.objective not in ("mdm", "ar"):
        raise ValueError(f"objective must be 'mdm' (masked diffusion) or 'ar' (next token), not {args.objective!r}.")
    if args.batch_size % (world_size * args.grad_accum):
        raise ValueError(f"batch_size ({args.batch_size}) must be divisible by the number of processes "
                         f"({world_size}) x grad_accum ({args.grad_accum}).")  # fmt: skip
    if args.mixed_precision not in ("auto", "bf16", "no"):
        raise ValueError(f"mixed_precision must be 'auto', 'bf16' or 'no', not {args.mixed_precision!r}.")
    if args.data and args.sft_plain_text:
        raise ValueError("sft_plain_text mixes tiny-world text into SFT; with --data put such rows in your file.")
    if args.eval_data and not args.data:
        raise ValueError("--eval-data needs --data (the tiny world has its own held-out problems).")
    if args.steps < args.warmup_steps:
        warnings.warn(f"--steps ({args.steps}) is shorter than --warmup-steps ({args.warmup_steps}): the learning "
                      f"rate never reaches --lr ({args.lr}).", stacklevel=2)  # fmt: skip


def train(args: TrainArgs, data=None) -> str:
    """Run one stage; returns the folder of the final model.

    data: optional source of global batches instead of the tiny world or --data, with the interface of
    TinyWorldData (the reversal experiment, genjo/reversal.py, trains on its own facts this way).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    use_cuda = torch.cuda.is_available()
    precision = {"auto": "bf16" if use_cuda else "no"}.get(args.mixed_precision, args.mixed_precision)
    accelerator = Accelerator(mixed_precision=precision, cpu=not use_cuda)
    rank, world = accelerator.process_index, accelerator.num_processes
    check_args(args, world)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    run_dir = Path(args.run_dir)
    last_dir = run_dir / "last"

    state = None
    if args.resume and (last_dir / STATE_FILE).exists():
        # Only tensors and plain Python values: a checkpoint file cannot run code when loaded.
        state = torch.load(last_dir / STATE_FILE, weights_only=True)
        if state.get("world_size", world) != world and fsdp:
            raise ValueError(f"{last_dir} holds FSDP optimizer shards of {state['world_size']} processes; "
                             f"resume with the same number of processes (not {world}).")  # fmt: skip
        tokenizer = _load_tokenizer(last_dir)
        model = _load_init_model(last_dir)
    elif args.init:
        tokenizer = _load_tokenizer(args.tokenizer or args.init)
        model = _load_init_model(args.init)
    else:
        torch.manual_seed(args.seed)
        tokenizer = _load_tokenizer(args.tokenizer) if args.tokenizer else build_tokenizer(vocab_size=args.vocab_size)
        model = new_model(args, tokenizer)
    causal = bool(getattr(model.config, "causal", False))
    if causal != (args.objective == "ar"):
        raise ValueError(f"--objective {args.objective} does not match the model (config.causal={causal}): "
                         "'ar' trains causal models, 'mdm' the others.")  # fmt: skip
    if len(tokenizer) > model.config.embedding_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the model only {model.config.embedding_size} "
                         "embeddings; pass the tokenizer the model was trained with (--tokenizer).")  # fmt: skip
    start_step = state["step"] if state else 0
    mask_id = model.config.mask_token_id
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if data is None:
        data = FileData(args, tokenizer) if args.data else TinyWorldData(args, tokenizer)
    if state is not None:
        data.load_state_dict(state.get("data", {}))
    eval_batches = data.eval_batches()
    optimizer = make_optimizer(args, model)
    if state is not None and not fsdp:
        optimizer.load_state_dict(state["optimizer"])
    model.train()
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    if state is not None and fsdp:
        from accelerate.utils import load_fsdp_optimizer

        load_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, str(last_dir / "optimizer"))
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "args.json").write_text(json.dumps(asdict(args), indent=2))
        n_params = sum(p.numel() for p in unwrapped.parameters())
        print(f"{args.stage}: {n_params / 1e6:.2f}M parameters, {world} process(es), steps {start_step}..{args.steps}")
        if args.data:
            unit = "rows" if args.stage == "pretrain" else "pairs"
            n_eval = sum(int(w.sum()) for *_, w in eval_batches)
            print(f"data: {args.data}; validation: {n_eval} {unit} from {args.eval_data or 'a held-out split'}")

    rows = slice(rank * args.batch_size // world, (rank + 1) * args.batch_size // world)
    loss_fn = pretrain_loss if args.stage == "pretrain" else sft_loss
    if args.objective == "ar":
        loss_fn = _ar_loss_fn(args.stage)
    last_step = min(args.steps, args.stop_at or args.steps)
    progress = tqdm(range(start_step, last_step), initial=start_step, total=last_step,
                    disable=not accelerator.is_main_process, desc=args.stage)  # fmt: skip
    tokens_seen = state["tokens"] if state else 0
    t_start, tokens_start = time.perf_counter(), tokens_seen
    t_record, tokens_record = time.perf_counter(), 0  # throughput since the last learning-curve record
    recent: list[tuple[float, int]] = []  # (time, tokens) of the last steps, for the bar's tokens/s
    window_losses: list[float] = []  # mean loss between two records of the learning curve
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args, step)
        input_ids, prompt_lengths = data.batch(step)
        noisy, masked, p_mask = step_noise(args, input_ids, mask_id, step)
        tensors = [t for t in (input_ids, prompt_lengths, noisy, masked, p_mask) if t is not None]
        micro_batches = list(zip(*(t[rows].chunk(args.grad_accum) for t in tensors)))
        step_loss = torch.zeros((), device=accelerator.device)
        for i, micro in enumerate(micro_batches):
            # Gradients are averaged across processes once per step, after the last micro-batch.
            with accelerator.no_sync(model) if i < len(micro_batches) - 1 else nullcontext():
                loss = loss_fn(model, *(t.to(accelerator.device) for t in micro))
                if args.grad_accum > 1:
                    loss = loss / args.grad_accum
                accelerator.backward(loss)
            step_loss += loss.detach()
        accelerator.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        tokens_seen += input_ids.numel()
        tokens_record += input_ids.numel()
        mean_loss = accelerator.reduce(step_loss, reduction="mean").item()
        window_losses.append(mean_loss)
        recent = [*recent[-9:], (time.perf_counter(), input_ids.numel())]
        rate = sum(n for _, n in recent[1:]) / (recent[-1][0] - recent[0][0]) if len(recent) > 1 else 0.0
        progress.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{rate:.0f}", lr=f"{learning_rate(args, step):.1e}")

        done = step + 1
        if done % args.eval_every == 0 or done == last_step:
            record = {"stage": args.stage, "step": done, "tokens": tokens_seen,
                      "loss": sum(window_losses) / len(window_losses),
                      "tokens_per_s": round(tokens_record / (time.perf_counter() - t_record), 1)}  # fmt: skip
            window_losses = []
            if eval_batches:
                progress.set_description(f"{args.stage} (validation)")
                record["val_loss"] = validation_loss(model, eval_batches, args, mask_id, accelerator,
                                                     accelerator.is_main_process)  # fmt: skip
            if args.stage == "sft" and not args.data:
                progress.set_description(f"{args.stage} (held-out accuracy)")
                record["accuracy"] = _gathered_eval(unwrapped, tokenizer, args, accelerator)
            if use_cuda:
                peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device=accelerator.device)
                record["peak_memory_gib"] = [round(x, 2) for x in accelerator.gather(peak).tolist()]
            progress.set_description(args.stage)
            if accelerator.is_main_process:
                progress.write(json.dumps(record))
                with open(run_dir / CURVE_FILE, "a") as f:
                    f.write(json.dumps(record) + "\n")
            t_record, tokens_record = time.perf_counter(), 0
        if done % args.save_every == 0 or done == last_step:
            _save_training_state(accelerator, model, optimizer, tokenizer, last_dir, fsdp,
                                 {"step": done, "tokens": tokens_seen, "data": data.state_dict()})  # fmt: skip

    if accelerator.is_main_process:
        elapsed = time.perf_counter() - t_start
        print(f"{tokens_seen - tokens_start} tokens in {elapsed:.0f} s: "
              f"{(tokens_seen - tokens_start) / max(elapsed, 1e-9):.0f} tokens/s over {world} process(es)")  # fmt: skip
    if use_cuda:
        peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device=accelerator.device)
        peaks = ", ".join(f"{x:.2f}" for x in accelerator.gather(peak).tolist())
        if accelerator.is_main_process:
            print(f"peak memory per process (GiB): {peaks}")
    final = args.export or str(run_dir / "final")
    sampler = None
    if args.stage == "sft" and not args.data:
        sampler = dict(tinyworld.SAMPLER_DEFAULTS)
    full_state = accelerator.get_state_dict(model) if fsdp else None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(unwrapped, tokenizer, final, sampler, full_state)
        if getattr(data, "reader", None) is not None and getattr(data.reader, "skipped", 0):
            print(f"skipped {data.reader.skipped} prompt/answer pairs longer than --sft-max-len {args.sft_max_len}")
    accelerator.wait_for_everyone()
    return final


def _save_training_state(accelerator, model, optimizer, tokenizer, folder: Path, fsdp: bool, state: dict) -> None:
    """Weights and tokenizer (a usable checkpoint) plus what --resume needs: step, tokens, data position,
    optimizer (one file; under FSDP one shard per process in folder/optimizer)."""
    full_state = accelerator.get_state_dict(model) if fsdp else None
    accelerator.wait_for_everyone()
    if fsdp:
        from accelerate.utils import save_fsdp_optimizer

        save_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, str(folder / "optimizer"))
    else:
        state["optimizer"] = optimizer.state_dict()
    if accelerator.is_main_process:
        save_checkpoint(accelerator.unwrap_model(model), tokenizer, str(folder), state_dict=full_state)
        torch.save({**state, "world_size": accelerator.num_processes}, folder / STATE_FILE)
    accelerator.wait_for_everyone()


def _gathered_eval(model, tokenizer, args, accelerator) -> dict[str, float]:
    """Accuracy over all processes' shares of the held-out problems."""
    acc, n = evaluate(model, tokenizer, args, accelerator.process_index, accelerator.num_processes,
                      progress=accelerator.is_main_process)  # fmt: skip
    keys = list(tinyworld.FAMILIES) + ["all"]
    per_family = len(tinyworld.FAMILIES) and n // len(tinyworld.FAMILIES)
    counts = torch.tensor([acc.get(k, 0.0) * (n if k == "all" else per_family) for k in keys], dtype=torch.float64)
    totals = torch.tensor([n if k == "all" else per_family for k in keys], dtype=torch.float64)
    counts = accelerator.reduce(counts.to(accelerator.device), reduction="sum").cpu()
    totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum").cpu()
    return {k: round(float(c / t), 4) for k, c, t in zip(keys, counts, totals)}


def _load_tokenizer(folder):
    """A checkpoint's tokenizer (never through remote code: a published folder's auto_map would prompt), or
    a tokenizer-only folder's."""
    if (Path(folder) / "config.json").exists():
        return load_tokenizer(str(folder))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)


def _load_init_model(folder) -> GenjoModelLM:
    """A Genjo or published-layout checkpoint in fp32, its config read without remote code."""
    return GenjoModelLM.from_pretrained(str(folder), config=load_config(str(folder)), dtype=torch.float32)


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


def recipe(run_root: str, export_root: Optional[str] = None, seed: int = 0, scale: float = 1.0) -> None:
    """Reproduce the shipped checkpoints: pre-train the base model, then SFT the instruct model.

    The models are exported to export_root/genjo-tiny-base and export_root/genjo-tiny-instruct
    (default export_root: run_root). scale multiplies every step count (e.g. 0.1 for a quick trial run).
    """
    export_root = export_root or run_root

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


# One line per flag for --help (the default is appended).
HELP = {
    "objective": "mdm: masked diffusion; ar: a causal model on the next-token loss (the autoregressive twin)",
    "run_dir": "folder of the run: learning_curve.jsonl, last/ (resumable checkpoint), final/",
    "init": "checkpoint to start from: a Genjo or published-layout folder or hub id (default: a new model)",
    "export": "where the final model is saved (default: RUN_DIR/final)",
    "resume": "continue from RUN_DIR/last when it exists (--no-resume starts over)",
    "seed": "seed of the data order, the noise and a new model's weights",
    "steps": "length of the learning-rate schedule, in optimizer steps",
    "stop_at": "end the run at this step; the schedule still spans --steps",
    "batch_size": "rows per optimizer step, all processes and micro-batches together",
    "seq_len": "pre-training row length in tokens (documents are packed, EOS between them)",
    "sft_max_len": "longest SFT row in tokens; longer prompt/answer pairs are skipped",
    "sft_long_pad_prob": "share of SFT batches EOS-padded to a random length up to --sft-max-len",
    "sft_plain_text": "tiny world only: share of SFT rows that are pre-training text",
    "crop_prob": "pre-training: probability that a batch is cropped to a random length",
    "eps": "minimum masking probability of the forward process",
    "lr": "peak learning rate (AdamW)",
    "min_lr": "learning rate at the end of the cosine decay",
    "warmup_steps": "steps of linear learning-rate warm-up",
    "weight_decay": "AdamW weight decay (not on norms and embeddings)",
    "grad_clip": "clip the gradient norm to this",
    "eval_every": "append a learning-curve record (loss, validation loss, accuracy) every N steps",
    "eval_problems": "tiny-world SFT: held-out problems per family for the accuracy",
    "save_every": "save RUN_DIR/last (weights, optimizer, data position) every N steps",
    "d_model": "new model: hidden size",
    "n_layers": "new model: number of blocks",
    "n_heads": "new model: attention heads",
    "mlp_hidden_size": "new model: SwiGLU hidden size",
    "rope_theta": "new model: RoPE base",
    "max_sequence_length": "new model: longest sequence (RoPE tables grow beyond it)",
    "vocab_size": "new model: embedding rows (at least the tokenizer's size)",
    "data": 'JSON-lines file or glob: {"text": ...} lines (pretrain) or {"messages": [...]} lines (sft)',
    "eval_data": "JSON-lines file for the validation loss (default: a held-out split of --data)",
    "eval_fraction": "share of --data lines held out for validation when there is no --eval-data",
    "eval_rows": "size of the validation set: packed rows (pretrain) or prompt/answer pairs (sft)",
    "tokenizer": "tokenizer folder or hub id (default: the --init checkpoint's, the tiny one for a new model)",
    "shuffle_buffer": "draw lines at random from a buffer of this many (0: file order)",
    "sft_turns": "multi-turn conversations: 'sample' one assistant turn per conversation per epoch, or 'all'",
    "grad_accum": "gradient accumulation: micro-batches per process per step",
    "gradient_checkpointing": "recompute block activations in the backward pass (less memory, more compute)",
    "mixed_precision": "bf16 autocast with fp32 weights ('bf16'), fp32 ('no'), or 'auto' (bf16 on CUDA)",
}
CHOICES = {"mixed_precision": ["auto", "bf16", "no"], "sft_turns": ["sample", "all"], "objective": ["mdm", "ar"]}


def build_parser() -> argparse.ArgumentParser:
    """The command line: a stage, then one flag per TrainArgs field (and the recipe's own)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["pretrain", "sft", "recipe"],
                        help="pretrain, sft, or recipe (re-train the embedded tiny models)")  # fmt: skip
    defaults = TrainArgs()
    for f in fields(TrainArgs):
        if f.name in ("stage", "family_weights"):
            continue
        value = getattr(defaults, f.name)
        names = [f"--{f.name.replace('_', '-')}"] + (["--seq-length"] if f.name == "seq_len" else [])
        text = HELP.get(f.name, f.name.replace("_", " "))
        text += "" if "(default" in text else " (default: %(default)s)"
        if isinstance(value, bool):
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, default=value, help=text)
        else:
            kind = {Optional[int]: int, Optional[str]: str}.get(f.type, type(value))
            parser.add_argument(*names, type=kind, default=value, help=text, choices=CHOICES.get(f.name))
    parser.add_argument("--family-weights", type=json.loads, default=None,
                        help='tiny world: JSON family weights, e.g. {"sorting": 1.0} (default: all)')  # fmt: skip
    parser.add_argument("--export-root", default=None,
                        help="recipe: folder of the exported models (default: the --run-dir)")  # fmt: skip
    parser.add_argument("--replace-shipped", action="store_true",
                        help="recipe: overwrite the embedded models in genjo/checkpoints (default: no)")  # fmt: skip
    parser.add_argument("--scale", type=float, default=1.0,
                        help="recipe: multiply every step count (default: %(default)s)")  # fmt: skip
    return parser


def main(argv=None) -> None:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.stage == "recipe":
        if ns.replace_shipped and ns.export_root:
            parser.error("--replace-shipped and --export-root are exclusive.")
        export_root = str(Path(__file__).parent / "checkpoints") if ns.replace_shipped else ns.export_root
        recipe(ns.run_dir, export_root, ns.seed, ns.scale)
        return
    kwargs = {f.name: getattr(ns, f.name) for f in fields(TrainArgs) if f.name not in ("stage", "family_weights")}
    if ns.family_weights:
        kwargs["family_weights"] = ns.family_weights
    print(train(TrainArgs(stage=ns.stage, **kwargs)))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
