"""The one place where scripts load a model: a local folder or a hub id, on the right device/dtype."""

import argparse
import os
from pathlib import Path
from typing import Optional, Union

import torch

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_MODEL = str(CHECKPOINTS / "genjo-tiny-instruct")  # the embedded chat model
DEFAULT_BASE_MODEL = str(CHECKPOINTS / "genjo-tiny-base")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: Union[str, torch.device]) -> torch.dtype:
    """bf16 on CUDA (the checkpoints' precision), fp32 on CPU (exact and fast there)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def _check_exists(name_or_path: str) -> None:
    embedded = {DEFAULT_MODEL, DEFAULT_BASE_MODEL}
    if name_or_path in embedded and not os.path.isdir(name_or_path):
        raise FileNotFoundError(
            f"The embedded checkpoint {name_or_path} is missing. Train it with `python -m genjo.train "
            "--recipe tiny` (see GUIDELINES.md), or pass --model with a local folder or a hub id."
        )


def load_tokenizer(name_or_path: Optional[str] = None):
    from transformers import AutoTokenizer

    name_or_path = name_or_path or DEFAULT_MODEL
    _check_exists(name_or_path)
    return AutoTokenizer.from_pretrained(name_or_path)


def load_model(
    name_or_path: Optional[str] = None,
    device: Union[str, torch.device, None] = None,
    dtype: Optional[torch.dtype] = None,
    with_tokenizer: bool = True,
):
    """Load a Genjo checkpoint (Genjo or original-release layout) in eval mode.

    name_or_path: a local folder or a hub id; defaults to the embedded instruct model.
    Returns (model, tokenizer), or the model alone when with_tokenizer is False.
    """
    from .modeling_genjo import GenjoModelLM

    name_or_path = name_or_path or DEFAULT_MODEL
    _check_exists(name_or_path)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    model = GenjoModelLM.from_pretrained(name_or_path, dtype=dtype).to(device).eval()
    if not with_tokenizer:
        return model
    return model, load_tokenizer(name_or_path)


def sampler_defaults(model) -> dict:
    """The checkpoint's own sampler settings (config.json ``sampler_defaults``: gen_length, steps,
    block_length, temperature, remasking), or {} when it names none. Scripts use them for every flag
    the user leaves unset."""
    return dict(getattr(getattr(model, "config", None), "sampler_defaults", None) or {})


def add_model_arguments(parser: argparse.ArgumentParser, default: str = DEFAULT_MODEL) -> argparse.ArgumentParser:
    """Add --model, --device and --dtype, shared by every script."""
    parser.add_argument("--model", default=default, help="local checkpoint folder or hub id (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cuda, cpu, cuda:1, ... (default: cuda if available)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["bfloat16", "float16", "float32"],
        help="weights dtype (default: bfloat16 on CUDA, float32 on CPU)",
    )
    return parser


def load_from_args(args: argparse.Namespace, with_tokenizer: bool = True):
    """load_model() with the options of add_model_arguments()."""
    dtype = getattr(torch, args.dtype) if args.dtype else None
    return load_model(args.model, device=args.device, dtype=dtype, with_tokenizer=with_tokenizer)
