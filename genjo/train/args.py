"""Pre-training and supervised fine-tuning of Genjo mask predictors (GUIDELINES.md, "Training recipe").

Pre-training: every token of a packed row is masked independently with probability
p = (1 - eps) t + eps, t ~ U(0, 1) per row; the loss is the cross-entropy at masked slots divided
by p (the 1/t weighting that makes it an upper bound of the negative log-likelihood), summed and
divided by b * L. With probability 0.01 the whole batch is cropped to a random length, so the model
also sees short sequences.

SFT: a chat prompt, then the answer + <|eot_id|>, right-padded with <|endoftext|>. The same noise,
but the prompt is never masked; the padding is part of the answer (maskable, with loss: this is how
the model learns to stop). Each row's loss is divided by its answer length (padding included).

Data: the synthetic tiny world by default, or your JSON-lines files with --data (genjo/train/files.py):
``{"text": ...}`` lines for pre-training, ``{"messages": [...]}`` lines for SFT. Every process builds
the same global batch and noise and trains on its own slice of rows, so a data-parallel run under
``accelerate launch`` sees exactly the batches of the single-process run, and --resume continues with
exactly the next batch (the step counter, the optimizer and the position in the data files are saved).

    python -m genjo.train recipe                    # re-train the tiny checkpoints into runs/genjo-tiny
    python -m genjo.train pretrain --data "corpus/*.jsonl" --run-dir runs/base --steps 2000
    python -m genjo.train sft --data chats.jsonl --init runs/base/final --run-dir runs/sft --steps 2000
    accelerate launch --config_file configs/fsdp_8b.yaml -m genjo.train sft ...   # the 8B on 8 GPUs
    python -m genjo.train pretrain --objective ar ...  # the autoregressive twin (causal mask, next token)
    python -m genjo.train vrpo --init runs/sft/final --data prefs.jsonl --run-dir runs/vrpo   # preference pairs

VRPO (docs/vrpo.md): DPO on ELBO estimates with variance reduction (LLaDA 1.5); the lines of --data are
{"messages": [... ending with the user's turn], "chosen": "...", "rejected": "..."}. Its defaults (learning
rate, schedule, batch) are VRPO_DEFAULTS, shown by `python -m genjo.train vrpo --help`.
"""

import argparse
import json
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

from .. import tinyworld
from ..storage import is_replaceable_folder
from .losses import OBJECTIVES

STAGES = ("pretrain", "sft", "vrpo")


@dataclass
class TrainArgs:
    stage: str = "pretrain"  # "pretrain", "sft" or "vrpo"
    # A key of genjo.train.losses.OBJECTIVES. "mdm": the masked-diffusion losses. "ar": a causal model on the
    # next-token loss, the autoregressive twin the reversal experiment compares against (genjo/reversal.py).
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
    # How pre-training documents share a row: "eod" (joined by EOS), "document" (joined by EOS, and a token attends
    # only within its document: document-level attention masks), "concat" (joined with nothing).
    packing: str = "eod"
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
    num_experts: int = 0  # > 0: a mixture-of-experts model (the LLaDA-MoE block) of this many experts per block
    experts_per_token: int = 2
    expert_hidden_size: Optional[int] = None  # default: mlp_hidden_size / experts_per_token (the dense active size)
    # Your data (genjo/train/files.py); without --data the synthetic tiny world is used.
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
    # VRPO (stage "vrpo", genjo/train/preference.py)
    beta: float = 0.1  # scale of the preference score inside the log-sigmoid
    budget: int = 8  # noisy copies per ELBO estimate
    allocation: str = "optimal"  # budget times x 1 mask; "naive": 1 time x budget masks; "KxM"
    antithetic: bool = True  # the reference's estimates share the policy's times and masks
    sft_weight: float = 0.0  # weight of the chosen answers' SFT loss added to the preference loss (0: pure VRPO)


# The defaults of a vrpo run where they differ from pre-training's: tuned on the embedded instruct model
# (docs/vrpo.md, "Defaults"); the 8B values are documented there.
VRPO_DEFAULTS = dict(steps=100, batch_size=8, lr=2.5e-5, min_lr=1e-5, warmup_steps=5, weight_decay=0.0, eval_every=20,
                     save_every=20, eval_fraction=0.1, eval_rows=128, sft_max_len=512)  # fmt: skip


def stage_defaults(stage: str) -> "TrainArgs":
    """The TrainArgs of a stage with every other setting at its default (VRPO_DEFAULTS for vrpo)."""
    return TrainArgs(stage=stage, **(VRPO_DEFAULTS if stage == "vrpo" else {}))


# One line per flag for --help (the default is appended).
HELP = {
    "objective": "; ".join(f"{name}: {objective.help}" for name, objective in OBJECTIVES.items()),
    "run_dir": "folder of the run: learning_curve.jsonl, last/ (resumable checkpoint), final/",
    "init": "checkpoint to start from: a Genjo or published-layout folder or hub id (default: a new model)",
    "export": "where the final model is saved (default: RUN_DIR/final)",
    "resume": "continue from RUN_DIR/last when it exists (--no-resume starts over)",
    "seed": "seed of the data order, the noise and a new model's weights",
    "steps": "length of the learning-rate schedule, in optimizer steps",
    "stop_at": "end the run at this step; the schedule still spans --steps",
    "batch_size": "rows per optimizer step, all processes and micro-batches together",
    "seq_len": "pre-training row length in tokens (documents are packed into rows, see --packing)",
    "packing": "pre-training rows: 'eod' joins documents with EOS; 'document' also masks attention across documents "
    "(a token sees only its own document); 'concat' joins them with nothing",
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
    "num_experts": "new model: experts per block, a mixture of experts as LLaDA-MoE (0: the dense model)",
    "experts_per_token": "new mixture-of-experts model: experts each token is routed to",
    "expert_hidden_size": "new mixture-of-experts model: SwiGLU hidden size of an expert "
    "(default: --mlp-hidden-size / --experts-per-token, the dense model's active size)",
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
    "beta": "vrpo: the preference score's scale in the loss -log sigmoid(beta * score)",
    "budget": "vrpo: noisy copies (diffusion time + mask) per ELBO estimate",
    "sft_weight": "vrpo: add this times the SFT loss of the chosen answers (their ELBO per answer token, free: "
    "the policy's estimates are already computed), an anchor that keeps what the model answers right (0: pure VRPO)",
    "allocation": "vrpo: the budget as 'optimal' (budget times x 1 mask), 'naive' (1 time x budget masks) or 'KxM'",
    "antithetic": "vrpo: the reference's ELBO estimates share the policy's times and masks (--no-antithetic: own)",
}
PACKINGS = ("eod", "document", "concat")
CHOICES = {"mixed_precision": ["auto", "bf16", "no"], "sft_turns": ["sample", "all"], "objective": list(OBJECTIVES),
           "packing": list(PACKINGS)}  # fmt: skip


def build_parser(stage: str = "pretrain") -> argparse.ArgumentParser:
    """The command line: a stage, then one flag per TrainArgs field (and the recipe's own).

    The flags' defaults are those of `stage` (stage_defaults): the vrpo stage has its own learning rate, etc.
    """
    parser = argparse.ArgumentParser(prog="python -m genjo.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("stage", choices=[*STAGES, "recipe"],
                        help="pretrain, sft, vrpo (preference pairs), or recipe (re-train the embedded tiny "
                             "models)")  # fmt: skip
    defaults = stage_defaults(stage)
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


def args_from_namespace(ns: argparse.Namespace) -> TrainArgs:
    """The TrainArgs of a parsed pretrain/sft command line (--family-weights only when given)."""
    kwargs = {f.name: getattr(ns, f.name) for f in fields(TrainArgs) if f.name not in ("stage", "family_weights")}
    if ns.family_weights:
        kwargs["family_weights"] = ns.family_weights
    return TrainArgs(stage=ns.stage, **kwargs)


def check_args(args: TrainArgs, world_size: int = 1) -> None:
    """ValueError for settings that cannot work; a warning for a schedule that never reaches --lr."""
    if args.stage not in STAGES:
        raise ValueError(f"stage must be 'pretrain', 'sft' or 'vrpo', not {args.stage!r}.")
    if args.stage == "vrpo":
        check_vrpo_args(args)
    if args.objective not in OBJECTIVES:
        names = ", ".join(f"'{name}' ({objective.help})" for name, objective in OBJECTIVES.items())
        raise ValueError(f"objective must be one of {names}, not {args.objective!r}.")
    if args.batch_size % (world_size * args.grad_accum):
        raise ValueError(f"batch_size ({args.batch_size}) must be divisible by the number of processes "
                         f"({world_size}) x grad_accum ({args.grad_accum}).")  # fmt: skip
    if args.packing not in PACKINGS:
        raise ValueError(f"packing must be 'eod', 'document' or 'concat', not {args.packing!r}.")
    if args.mixed_precision not in CHOICES["mixed_precision"]:
        raise ValueError(f"mixed_precision must be 'auto', 'bf16' or 'no', not {args.mixed_precision!r}.")
    if args.data and args.sft_plain_text:
        raise ValueError("sft_plain_text mixes tiny-world text into SFT; with --data put such rows in your file.")
    if args.eval_data and not args.data:
        raise ValueError("--eval-data needs --data (the tiny world has its own held-out problems).")
    export = Path(args.export).expanduser() if args.export else None
    if export is not None and export.exists() and not is_replaceable_folder(export):
        raise ValueError(f"--export {args.export} exists and is not a checkpoint folder (no config.json); the "
                         "export replaces the whole folder, so choose a new or a checkpoint folder.")  # fmt: skip
    if args.steps < args.warmup_steps:
        warnings.warn(f"--steps ({args.steps}) is shorter than --warmup-steps ({args.warmup_steps}): the learning "
                      f"rate never reaches --lr ({args.lr}).", stacklevel=2)  # fmt: skip


def check_vrpo_args(args: TrainArgs) -> None:
    """ValueError for a vrpo run that cannot work (before any model is loaded)."""
    from .preference import parse_allocation

    if not args.init:
        raise ValueError("vrpo starts from a fine-tuned model, which is also the frozen reference: pass --init "
                         "SFT_FOLDER (e.g. genjo/checkpoints/genjo-tiny-instruct).")  # fmt: skip
    if not args.data:
        raise ValueError('vrpo needs --data prefs.jsonl: lines {"messages": [...], "chosen": "...", "rejected": "..."} '
                         "(python -m genjo.train.pairs writes such a file from a model's own samples).")  # fmt: skip
    if args.objective != "mdm":
        raise ValueError(f"vrpo aligns masked diffusion models (--objective mdm), not {args.objective!r}.")
    if args.sft_plain_text:
        raise ValueError("sft_plain_text mixes tiny-world text into SFT; vrpo trains on preference pairs only.")
    if not (isinstance(args.beta, (int, float)) and args.beta > 0):
        raise ValueError(f"beta must be > 0 (e.g. 0.1), not {args.beta!r}.")
    if not (isinstance(args.sft_weight, (int, float)) and args.sft_weight >= 0):
        raise ValueError(f"sft_weight must be >= 0 (0: pure VRPO; e.g. 0.1), not {args.sft_weight!r}.")
    parse_allocation(args.allocation, args.budget)
