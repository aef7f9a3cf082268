"""The one place where scripts load a model: a local folder or a hub id, on the right device/dtype."""

import argparse
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

import torch
from transformers.utils import logging as hf_logging

from .checks import check_int
from .long_context import DEFAULT_ROPE_SCALING, ROPE_SCALINGS, check_context_length, check_rope_scaling, extend_context

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_MODEL = str(CHECKPOINTS / "genjo-tiny-instruct")  # the embedded chat model
DEFAULT_BASE_MODEL = str(CHECKPOINTS / "genjo-tiny-base")
RETRAIN_HINT = (
    "`python -m genjo.train recipe --replace-shipped` re-trains the embedded checkpoints in place (GUIDELINES.md)"
)
# Below this many parameters a model on the CPU runs on one thread by default: its matrices are too small for
# PyTorch's one-thread-per-core default to pay for the synchronisation (benchmarks/bench_threads.py).
SMALL_MODEL_PARAMETERS = 10**9
# Set by a user who chose the thread count; the default policy then leaves PyTorch's setting alone.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


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


# The two architectures Genjo runs: the dense mask predictor and the mixture of experts (LLaDA-MoE).
DENSE_ARCHITECTURES = ("GenjoModelLM", "LLaDAModelLM")
MOE_ARCHITECTURES = ("GenjoMoeModelLM", "LLaDAMoEModelLM", "LLaDAMoEModel")
DENSE_CONFIG_KEYS = ("d_model", "n_layers", "n_heads")  # OLMo-style names: only a dense config has them
# The token that ends a chat turn in a published LLaDA-MoE tokenizer (its config.json names no EoT id).
MOE_TURN_END = "<|role_end|>"


def architecture_of(config_dict: dict, name_or_path: str = "") -> str:
    """ "moe" or "dense", from a config.json's ``architectures``, else from the keys only one kind has (never
    from ``model_type``: the published dense 8B and LLaDA-MoE both say "llada"). ValueError for a foreign config."""
    from .configuration_genjo_moe import MOE_CONFIG_KEYS

    named = set(config_dict.get("architectures") or [])
    if named & set(MOE_ARCHITECTURES):
        return "moe"
    if named & set(DENSE_ARCHITECTURES):
        return "dense"
    if named:
        raise ValueError(f"{name_or_path or 'The checkpoint'}: config.json names architectures {sorted(named)}, "
                         f"which Genjo does not run (it runs {', '.join(DENSE_ARCHITECTURES + MOE_ARCHITECTURES)}). "
                         "Pass a Genjo, LLaDA or LLaDA-MoE checkpoint.")  # fmt: skip
    if any(key in config_dict for key in MOE_CONFIG_KEYS):
        return "moe"
    if config_dict.get("model_type") == "genjo" or any(key in config_dict for key in DENSE_CONFIG_KEYS):
        return "dense"
    raise ValueError(f"{name_or_path or 'The checkpoint'}: config.json has neither an architecture Genjo runs nor "
                     f"the keys of one ({', '.join(DENSE_CONFIG_KEYS)} for the dense model, "
                     f"{', '.join(MOE_CONFIG_KEYS)} for the mixture of experts).")  # fmt: skip


def load_config(name_or_path: Optional[str] = None, **kwargs):
    """GenjoConfig or GenjoMoeConfig of a Genjo or published folder (or hub id), read without remote code.

    The class follows the folder's architecture (``architecture_of``). A published config.json names the original
    release (model_type "llada"); it is read for its architecture fields only, so the loader's "model of type
    llada" warning would be noise. A published LLaDA-MoE folder names no end-of-turn id: it is read from its
    tokenizer (``<|role_end|>``), else the EOS ends a turn.
    """
    from .configuration_genjo import GenjoConfig
    from .configuration_genjo_moe import GenjoMoeConfig

    path = check_checkpoint(name_or_path or DEFAULT_MODEL)
    config_dict, kwargs = GenjoConfig.get_config_dict(path, **kwargs)
    if architecture_of(config_dict, str(name_or_path or path)) == "dense":
        return GenjoConfig.from_dict(config_dict, **kwargs)
    if "eot_token_id" not in config_dict:
        config_dict = {**config_dict, "eot_token_id": added_token_id(path, MOE_TURN_END)}
    return GenjoMoeConfig.from_dict(config_dict, **kwargs)


def added_token_id(name_or_path: str, token: str) -> Optional[int]:
    """The id of an added (special) token in a folder's (or hub id's) tokenizer_config.json or tokenizer.json, or
    None when neither names it."""
    from transformers.utils import cached_file

    for name, field in (("tokenizer_config.json", "added_tokens_decoder"), ("tokenizer.json", "added_tokens")):
        try:
            file = cached_file(name_or_path, name, _raise_exceptions_for_missing_entries=False)
        except OSError:  # offline and not cached, or no such repository: the EoT then falls back to the EOS
            file = None
        if file is None:
            continue
        with open(file) as f:
            entries = json.load(f).get(field) or {}
        pairs = entries.items() if isinstance(entries, dict) else ((e.get("id"), e) for e in entries)
        for token_id, entry in pairs:
            if isinstance(entry, dict) and entry.get("content") == token:
                return int(token_id)
    return None


def model_class(config):
    """GenjoModelLM or GenjoMoeModelLM, the class that runs config."""
    from .configuration_genjo_moe import GenjoMoeConfig

    if isinstance(config, GenjoMoeConfig):
        from .modeling_genjo_moe import GenjoMoeModelLM

        return GenjoMoeModelLM
    from .modeling_genjo import GenjoModelLM

    return GenjoModelLM


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


def cpu_threads(threads: Optional[int], on_cpu: bool, parameters: int, environ=os.environ) -> Optional[int]:
    """The policy for torch's CPU thread count: the number to set, or None to leave torch's setting alone.

    threads: the user's choice (``--threads``): N >= 1 is used as given, 0 keeps torch's own default (one
        thread per core); None applies the default policy:
    one thread for a small model (< SMALL_MODEL_PARAMETERS) held wholly on the CPU, unless OMP_NUM_THREADS or
    MKL_NUM_THREADS is set in ``environ``; otherwise torch's setting.
    """
    if threads is not None:
        check_int("threads", threads, minimum=0)
        return threads or None
    if not on_cpu or parameters >= SMALL_MODEL_PARAMETERS or any(environ.get(name) for name in THREAD_VARIABLES):
        return None
    return 1


def set_cpu_threads(model, threads: Optional[int] = None, on_cpu: Optional[bool] = None) -> Optional[int]:
    """Apply ``cpu_threads`` to a loaded model: torch.set_num_threads(n) when the policy names one.

    on_cpu: whether every weight is on the CPU (default: read from the model's parameters).
    Returns the thread count set, or None when torch's setting was left alone.
    """
    parameters = list(model.parameters())
    if on_cpu is None:
        on_cpu = all(p.device.type == "cpu" for p in parameters)
    chosen = cpu_threads(threads, on_cpu, sum(p.numel() for p in parameters))
    if chosen is not None:
        torch.set_num_threads(chosen)
    return chosen


# Below this many bytes of weights a checkpoint loads in a blink: no "Loading weights" progress bar for it.
PROGRESS_BAR_BYTES = 100 * 2**20


@contextmanager
def weights_progress_bar(path: str):
    """transformers' "Loading weights" bar only for a local checkpoint large enough to take a while (or a hub id)."""
    folder = Path(path)
    small = folder.is_dir() and sum(f.stat().st_size for f in folder.glob("*.safetensors")) < PROGRESS_BAR_BYTES
    was_on = hf_logging.is_progress_bar_enabled()
    if small and was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if small and was_on:
            hf_logging.enable_progress_bar()


def load_model(
    name_or_path: Optional[str] = None,
    device: Union[str, torch.device, None] = None,
    dtype: Optional[torch.dtype] = None,
    with_tokenizer: bool = True,
    *,
    device_map: Union[str, dict, None] = None,
    max_memory: Optional[dict] = None,
    offload_folder: Optional[str] = None,
    threads: Optional[int] = None,
    context_length: Optional[int] = None,
    rope_scaling: Union[str, float] = DEFAULT_ROPE_SCALING,
):
    """Load a Genjo checkpoint (Genjo or original-release layout, dense or LLaDA-MoE) in eval mode.

    name_or_path: a local folder or a hub id; defaults to the embedded instruct model.
    device_map: None puts the whole model on ``device``. "auto" (or "balanced", "sequential", or an
        explicit {module name: device} dict) hands placement to accelerate's big-model loading:
        blocks are spread over the GPUs, then CPU memory, then ``offload_folder`` on disk (within
        ``max_memory``, e.g. {0: "14GiB", "cpu": "30GiB"}), and run where their weights are. The
        input ids then go on ``model.device``; accelerate returns the logits on the input's device, while
        each layer's key/value cache stays on its block's device.
    threads: torch's CPU thread count (``torch.set_num_threads``, process-wide). None: one thread when the whole
        model is on the CPU and has under a billion parameters (the embedded models), unless OMP_NUM_THREADS or
        MKL_NUM_THREADS is set; else torch's setting is kept. N >= 1 sets N; 0 keeps torch's setting (one thread
        per core by default). See ``cpu_threads``.
    context_length: run at up to this many tokens (prompt + answer): the RoPE base is scaled by
        ``rope_scaling`` ("diffusion-aware" by default, "ntk", "none", or a factor such as 14) and
        max_sequence_length raised to it; see genjo.long_context.extend_context. None (default) or a length
        the checkpoint already covers leaves the model as it is.
    Returns (model, tokenizer), or the model alone when with_tokenizer is False.
    """
    if context_length is not None:  # bad values fail before the weights are read
        check_context_length(context_length)
        check_rope_scaling(rope_scaling)
    path = check_checkpoint(name_or_path or DEFAULT_MODEL)
    config = load_config(path)
    if context_length is not None:
        extend_context(config, context_length, rope_scaling)
    model_cls = model_class(config)
    if device_map is not None and device is not None:
        raise ValueError("Pass device or device_map, not both (device_map places the model itself).")
    with weights_progress_bar(path):
        if device_map is None:
            device = torch.device(device) if device is not None else default_device()
            dtype = dtype or default_dtype(device)
            model = model_cls.from_pretrained(path, config=config, dtype=dtype).to(device).eval()
        else:
            dtype = dtype or default_dtype(default_device())
            kwargs = dict(max_memory=max_memory, offload_folder=offload_folder)
            kwargs = {name: value for name, value in kwargs.items() if value is not None}
            model = model_cls.from_pretrained(path, config=config, dtype=dtype, device_map=device_map, **kwargs)
            model = model.eval()
    set_cpu_threads(model, threads)
    if not with_tokenizer:
        return model
    return model, load_tokenizer(path, config)


def add_model_arguments(parser: argparse.ArgumentParser, default: str = DEFAULT_MODEL) -> argparse.ArgumentParser:
    """Add --model, --device, --device-map, --dtype, --threads, --context-length and --rope-scaling, shared by every
    script."""
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
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of torch; 0 keeps torch's default of one per core (default: 1 for a model under 1e9 "
        "parameters on the CPU, where more threads only add overhead, unless OMP_NUM_THREADS or MKL_NUM_THREADS "
        "is set; else torch's default)",
    )
    parser.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="run at up to this many tokens (prompt + answer) by scaling the RoPE base, see --rope-scaling "
        "(default: the checkpoint's max_sequence_length, unchanged)",
    )
    parser.add_argument(
        "--rope-scaling",
        default=DEFAULT_ROPE_SCALING,
        help=f"with --context-length: the law that scales the RoPE base ({', '.join(ROPE_SCALINGS)}) or a factor "
        "such as 14 (default: %(default)s)",
    )
    return parser


def load_from_args(args: argparse.Namespace, with_tokenizer: bool = True):
    """load_model() with the options of add_model_arguments()."""
    dtype = getattr(torch, args.dtype) if args.dtype else None
    device_map = getattr(args, "device_map", None)
    if device_map is not None and args.device is not None:
        raise ValueError("Pass --device or --device-map, not both.")
    context_length = getattr(args, "context_length", None)
    rope_scaling = getattr(args, "rope_scaling", DEFAULT_ROPE_SCALING)
    return load_model(args.model, device=args.device, dtype=dtype, with_tokenizer=with_tokenizer, device_map=device_map,
                      threads=getattr(args, "threads", None), context_length=context_length,
                      rope_scaling=rope_scaling)  # fmt: skip
