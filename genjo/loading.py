"""The one place where scripts load a model: a local folder or a hub id, on the right device/dtype."""

import argparse
import os
from pathlib import Path
from typing import Optional, Union

import torch

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_MODEL = str(CHECKPOINTS / "genjo-tiny-instruct")  # the embedded chat model
DEFAULT_BASE_MODEL = str(CHECKPOINTS / "genjo-tiny-base")
RETRAIN_HINT = (
    "`python -m genjo.train recipe --replace-shipped` re-trains the embedded checkpoints in place (GUIDELINES.md)"
)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: Union[str, torch.device]) -> torch.dtype:
    """bf16 on CUDA (the checkpoints' precision), fp32 on CPU (exact and fast there)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def _looks_local(name_or_path: str) -> bool:
    """A path rather than a hub id ("org/name"): ./ ../ / ~ prefixes, several separators, or a
    first component that exists here (runs/base/final when runs/ exists)."""
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        return True
    if os.sep != "/" and os.sep in name_or_path:
        return True
    first = name_or_path.split("/")[0]
    return "/" in name_or_path and os.path.isdir(first)


def check_checkpoint(name_or_path: str) -> str:
    """name_or_path with ~ expanded, or a clear error when it cannot be a checkpoint.

    FileNotFoundError: the embedded checkpoint or a local-looking folder is missing, or a folder has
    no config.json (loading it would otherwise build the 8B default architecture with random weights).
    A hub id is passed through.
    """
    path = os.path.expanduser(name_or_path)
    if name_or_path in (DEFAULT_MODEL, DEFAULT_BASE_MODEL) and not os.path.isdir(path):
        raise FileNotFoundError(f"The embedded checkpoint {name_or_path} is missing: {RETRAIN_HINT}, or pass "
                                "--model with a local folder or a hub id.")  # fmt: skip
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{name_or_path} has no config.json, so it is not a checkpoint folder. Pass the "
                                    "folder that holds config.json and the *.safetensors weights (a Genjo folder or a "
                                    "published one).")  # fmt: skip
        return path
    if os.path.exists(path):
        raise FileNotFoundError(f"{name_or_path} is a file; --model takes a checkpoint folder (or a hub id).")
    # A hub id is org/name: a bare name that is not here is a missing folder, not a download to attempt.
    if _looks_local(name_or_path) or "/" not in name_or_path:
        raise FileNotFoundError(f"The checkpoint folder {name_or_path} does not exist. Check the path (relative "
                                f"paths start from {os.getcwd()}), or give a hub id such as org/name (loading one "
                                "needs a network connection, or its files in the Hugging Face cache).")  # fmt: skip
    return name_or_path


def load_config(name_or_path: Optional[str] = None, **kwargs):
    """GenjoConfig of a Genjo or published folder (or hub id), read without remote code.

    A published config.json names the original release (model_type "llada"); it is read for its
    architecture fields only, so the loader's "model of type llada" warning would be noise.
    """
    from .configuration_genjo import GenjoConfig

    path = check_checkpoint(name_or_path or DEFAULT_MODEL)
    config_dict, kwargs = GenjoConfig.get_config_dict(path, **kwargs)
    return GenjoConfig.from_dict(config_dict, **kwargs)


def load_tokenizer(name_or_path: Optional[str] = None, config=None):
    """The checkpoint's tokenizer, never through remote code.

    A published folder's config.json carries an ``auto_map``; AutoTokenizer would then ask "Do you wish
    to run the custom code? [y/N]" on a terminal (and wait 15 s for an answer) before loading a plain
    fast tokenizer. Handing it the config and ``trust_remote_code=False`` loads the same tokenizer
    without asking.
    """
    from transformers import AutoTokenizer

    path = check_checkpoint(name_or_path or DEFAULT_MODEL)
    config = config if config is not None else load_config(path)
    return AutoTokenizer.from_pretrained(path, config=config, trust_remote_code=False)


def load_model(
    name_or_path: Optional[str] = None,
    device: Union[str, torch.device, None] = None,
    dtype: Optional[torch.dtype] = None,
    with_tokenizer: bool = True,
    *,
    device_map: Union[str, dict, None] = None,
    max_memory: Optional[dict] = None,
    offload_folder: Optional[str] = None,
):
    """Load a Genjo checkpoint (Genjo or original-release layout) in eval mode.

    name_or_path: a local folder or a hub id; defaults to the embedded instruct model.
    device_map: None puts the whole model on ``device``. "auto" (or "balanced", "sequential", or an
        explicit {module name: device} dict) hands placement to accelerate's big-model loading:
        blocks are spread over the GPUs, then CPU memory, then ``offload_folder`` on disk (within
        ``max_memory``, e.g. {0: "14GiB", "cpu": "30GiB"}), and run where their weights are. The
        input ids then go on ``model.device``; accelerate returns the logits on the input's device, while
        each layer's key/value cache stays on its block's device.
    Returns (model, tokenizer), or the model alone when with_tokenizer is False.
    """
    from .modeling_genjo import GenjoModelLM

    path = check_checkpoint(name_or_path or DEFAULT_MODEL)
    config = load_config(path)
    if device_map is None:
        device = torch.device(device) if device is not None else default_device()
        dtype = dtype or default_dtype(device)
        model = GenjoModelLM.from_pretrained(path, config=config, dtype=dtype).to(device).eval()
    else:
        if device is not None:
            raise ValueError("Pass device or device_map, not both (device_map places the model itself).")
        dtype = dtype or default_dtype(default_device())
        kwargs = {k: v for k, v in dict(max_memory=max_memory, offload_folder=offload_folder).items() if v is not None}
        model = GenjoModelLM.from_pretrained(path, config=config, dtype=dtype, device_map=device_map, **kwargs).eval()
    if not with_tokenizer:
        return model
    return model, load_tokenizer(path, config)


def add_model_arguments(parser: argparse.ArgumentParser, default: str = DEFAULT_MODEL) -> argparse.ArgumentParser:
    """Add --model, --device, --device-map and --dtype, shared by every script."""
    parser.add_argument("--model", default=default, help="local checkpoint folder or hub id (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cuda, cpu, cuda:1, ... (default: cuda if available)")
    parser.add_argument(
        "--device-map",
        default=None,
        help="'auto' (or 'balanced', 'sequential') splits the model over the GPUs and offloads the rest to CPU "
        "memory (accelerate big-model loading; e.g. the 8B on a 16 GB GPU); replaces --device (default: none, the "
        "whole model on --device)",
    )
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
    device_map = getattr(args, "device_map", None)
    if device_map is not None and args.device is not None:
        raise ValueError("Pass --device or --device-map, not both.")
    return load_model(args.model, device=args.device, dtype=dtype, with_tokenizer=with_tokenizer, device_map=device_map)
