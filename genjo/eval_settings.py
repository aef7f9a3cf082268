"""The eval harness's model arguments: lm-eval's ``--model_args`` turned into typed, checked values.

lm-eval hands ``--model_args cfg=0.5,steps=256,cache=dual,logits_eos_inf=True`` to the model's constructor
as keyword arguments (literal-evaluated where it can: ``0.5`` a float, ``True`` a bool, ``None`` None, the
rest strings), plus ``batch_size`` and ``device`` from its own flags. ``parse_model_args`` casts each one to
its type and checks its range and choices; every ValueError names the model_arg as the user spelled it.

Two kinds of model_args:

- sampler settings, from the one table ``genjo.settings.SAMPLER_SETTINGS``, under their table names
  (``cfg_scale=``) or their harness names (``cfg=``). Unset ones stay unset until the model loads; then
  ``resolve_harness_sampler`` gives each the checkpoint's ``sampler_defaults``, else the table's fallback.
- the harness's own, the fields of ``HarnessArguments`` (model_path, batch_size, mc_num, ...).

No lm-eval import here: the settings can be parsed and checked without the optional dependency.
"""

import difflib
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Optional

import torch

from .checks import check_int
from .loading import DEFAULT_BASE_MODEL
from .long_context import DEFAULT_ROPE_SCALING, check_rope_scaling
from .sampling import check_sampler_settings
from .settings import FALLBACKS, SAMPLER_SETTINGS, checkpoint_sampler_defaults, resolve_sampler_settings

SEED = 1234  # the reference's seed: of the evaluation run and the base of the per-request seeds
# Keyword arguments lm-eval itself adds to the model arguments; accepted and unused.
LM_EVAL_EXTRAS = ("max_batch_size",)
DTYPES = ("bfloat16", "float16", "float32", "auto")
# Every model_arg spelling of a sampler setting: its table name and its harness names (cfg for cfg_scale).
SAMPLER_MODEL_ARGS = {key: setting for setting in SAMPLER_SETTINGS for key in (setting.name, *setting.harness_names)}


def harness_argument(default, kind: type, help: str, shown: Optional[str] = None, minimum: Optional[int] = None,
                     choices: Optional[tuple] = None):  # fmt: skip
    """A field of HarnessArguments: its default when the model_arg is unset (``shown`` says it in words where
    it depends on the model or the machine), the type it is cast to, what it means (the model_args table of
    EVAL.md), and its range or choices."""
    metadata = dict(kind=kind, help=help, shown=shown, minimum=minimum, choices=choices)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class HarnessArguments:
    """The harness's own model_args, typed; ``sampler`` holds the sampler settings given, by table name."""

    model_path: str = harness_argument(
        DEFAULT_BASE_MODEL, str, "checkpoint folder or hub id (an instruct model for `--apply_chat_template`)",
        shown="embedded base model")  # fmt: skip
    mask_id: Optional[int] = harness_argument(None, int, "[MASK] id", shown="config `mask_token_id`")
    max_length: Optional[int] = harness_argument(
        None, int, "longest context + continuation (likelihood) or prompt + answer (generation) in tokens",
        shown="config `max_sequence_length`", minimum=2)  # fmt: skip
    batch_size: int = harness_argument(
        32, int, "likelihood: Monte-Carlo rows per forward (lowered to `mc_num`, must divide it); generation: "
        "prompts per `generate()` call (left-padded)", shown="`--batch_size` (32 programmatically)",
        minimum=1)  # fmt: skip
    mc_num: int = harness_argument(
        128, int, "Monte-Carlo samples per likelihood; 1 is exact for one-token answers (MMLU, CMMLU, C-Eval)",
        minimum=1)  # fmt: skip
    is_check_greedy: bool = harness_argument(
        True, bool, "compute `is_greedy` (one forward per continuation token); `False` reports 0")  # fmt: skip
    device: str = harness_argument(
        "cuda", str, "single process: where the model runs; falls back to the CPU without CUDA (the CLI passes "
        "`cuda:0` even on CPU machines). Under `accelerate launch` each process uses its own device.")  # fmt: skip
    dtype: Optional[torch.dtype] = harness_argument(
        None, str, "weights dtype (`auto`: the default)", shown="bf16 on CUDA, fp32 on CPU", choices=DTYPES
    )
    device_map: Optional[str] = harness_argument(
        None, str, "`auto` (or `balanced`, `sequential`) splits or offloads the model with accelerate's "
        "big-model loading, in a single process only (replaces `device`)")  # fmt: skip
    context_length: Optional[int] = harness_argument(
        None, int, "run at up to this many tokens: the RoPE base scaled by `rope_scaling`, `max_sequence_length` "
        "raised (docs/long-context.md)", shown="config `max_sequence_length`", minimum=1)  # fmt: skip
    rope_scaling: str = harness_argument(
        DEFAULT_ROPE_SCALING, str, "with `context_length`: the law that scales the RoPE base (diffusion-aware, "
        "ntk, none) or a factor such as 14")  # fmt: skip
    seed: int = harness_argument(SEED, int, "base of the per-request seeds")
    sampler: dict = field(default_factory=dict)


HARNESS_FIELDS = {item.name: item for item in fields(HarnessArguments) if item.name != "sampler"}


def is_unset(value) -> bool:
    """None, or a string lm-eval did not turn into None: '', 'none', 'null' (any case)."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))


def cast_model_arg(key: str, value, kind: type, choices: Optional[tuple] = None):
    """``value`` (as lm-eval passed it: a str, int, float or bool) as ``kind``, or None when unset.

    ValueError naming ``key`` for a value that is not of the type, a non-finite float, or one not in choices.
    """
    if is_unset(value):
        return None
    if kind is bool:
        result = as_bool(key, value)
    elif kind is int:
        result = as_int(key, value)
    elif kind is float:
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}={value!r} is not a number; use e.g. {key}=0.5.") from None
        if not math.isfinite(result):
            raise ValueError(f"{key}={result} is not a finite number.")
    elif isinstance(value, torch.dtype):  # a programmatic dtype=torch.bfloat16
        result = str(value).removeprefix("torch.")
    else:
        result = str(value)
    if choices is not None and result not in choices:
        raise ValueError(f"{key}={result!r} is unknown; use one of {', '.join(map(str, choices))}.")
    return result


def as_bool(key: str, value) -> bool:
    """A bool from a bool, 0 or 1, or a word (True/False, yes/no, t/f, y/n, any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Real) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "t", "yes", "y", "1"):
        return True
    if text in ("false", "f", "no", "n", "0"):
        return False
    raise ValueError(f"{key}={value!r} is not a boolean; use True or False.")


def as_int(key: str, value) -> int:
    """An int from an int, an integral float (lm-eval reads 1e3 as 1000.0) or a string of digits."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{key}={value!r} must be an integer; e.g. {key}=32.")


def unknown_model_args_message(unknown: list[str]) -> str:
    known = [*HARNESS_FIELDS, *SAMPLER_MODEL_ARGS]
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
    return (f"unknown model argument(s) {', '.join(hints)}; the model_args are {', '.join(HARNESS_FIELDS)} and the "
            f"sampler settings {', '.join(SAMPLER_MODEL_ARGS)} (see EVAL.md).")  # fmt: skip


def parse_model_args(model_args: Mapping[str, Any]) -> HarnessArguments:
    """lm-eval's model_args (strings or literals) as typed HarnessArguments.

    The sampler settings given go to ``.sampler`` by table name (``cfg=`` and ``cfg_scale=`` are both
    ``cfg_scale``); unset ones are left out, to be resolved once the model loads. The settings given are
    checked with the sampler's own rules here (``check_given_sampler_settings``), before anything loads.
    Raises ValueError naming the model_arg: an unknown or doubly given one, a value not of its type or
    outside its range or choices.
    """
    if "chat_template" in model_args:
        raise ValueError(
            "chat_template is not a model argument: use lm-eval's own chat path, --apply_chat_template "
            "(simple_evaluate(apply_chat_template=True)) and optionally --fewshot_as_multiturn, with "
            "model_path=<an instruct model>."
        )
    unknown = sorted(set(model_args) - set(HARNESS_FIELDS) - set(SAMPLER_MODEL_ARGS) - set(LM_EVAL_EXTRAS))
    if unknown:
        raise ValueError(unknown_model_args_message(unknown))

    sampler, given_as = {}, {}
    for key, value in model_args.items():
        setting = SAMPLER_MODEL_ARGS.get(key)
        if setting is None or (value := cast_model_arg(key, value, setting.type, setting.choices)) is None:
            continue
        if setting.name in sampler:
            raise ValueError(f"{given_as[setting.name]} and {key} both set {setting.name}; give one of them.")
        sampler[setting.name], given_as[setting.name] = value, key
    try:
        check_given_sampler_settings(sampler)
    except ValueError as error:  # the sampler's message names the table's spelling: say which model_arg set it
        spelled = [f"{key}= sets {name}" for name, key in given_as.items() if key != name and name in str(error)]
        if not spelled:
            raise
        raise ValueError(f"{error} (model_args: {', '.join(spelled)})") from None

    own = {}
    for key, item in HARNESS_FIELDS.items():
        value = cast_model_arg(key, model_args.get(key), item.metadata["kind"], item.metadata["choices"])
        if value is not None and item.metadata["minimum"] is not None:
            check_int(key, value, minimum=item.metadata["minimum"])
        if value is not None:
            own[key] = value
    if "dtype" in own:
        own["dtype"] = None if own["dtype"] == "auto" else getattr(torch, own["dtype"])
    if "rope_scaling" in own:
        check_rope_scaling(own["rope_scaling"])  # before the model loads
    return HarnessArguments(**own, sampler=sampler)


def check_given_sampler_settings(given: Mapping[str, Any]) -> None:
    """The sampler's own checks (``check_sampler_settings``) on the settings given, before the model loads.

    Each unset setting is filled with a value that agrees with the given ones (one block of the given length,
    one step per block, greedy, no guidance, no parallel decoding), so only what the user wrote can fail: the
    settings that come from the checkpoint or the fallbacks are checked once it has loaded.
    """
    gen_length, block_length = given.get("gen_length"), given.get("block_length")
    if gen_length is None:
        gen_length = block_length if block_length is not None and block_length > 0 else 1
    if block_length is None:
        block_length = gen_length if gen_length > 0 else 1
    blocks = gen_length // block_length if gen_length > 0 and block_length > 0 else 1
    filled = {"remasking": FALLBACKS["remasking"], "temperature": 0.0, "cfg_scale": 0.0, **given}
    check_sampler_settings(None, **{**filled, "gen_length": gen_length, "block_length": block_length,
                                    "steps": given.get("steps", max(blocks, 1))})  # fmt: skip


def resolve_harness_sampler(given: Mapping[str, Any], model, mask_id: int) -> dict:
    """Every sampler setting for ``generate()``: the one given, else the checkpoint's ``sampler_defaults``,
    else the table's fallback (``resolve_sampler_settings``), checked against the loaded model.

    A ValueError caused by a setting the user left unset says where its value came from.
    """
    settings = resolve_sampler_settings(given, model)
    try:
        check_sampler_settings(model, **settings, mask_id=mask_id)
    except ValueError as error:
        own = checkpoint_sampler_defaults(model)
        taken = [f"{name}={value!r} from {'the checkpoint' if name in own else 'the fallback'}"
                 for name, value in settings.items() if name not in given and value is not None]  # fmt: skip
        if not taken:
            raise
        raise ValueError(
            f"{error} The model_args left unset took {', '.join(taken)}; set them in model_args."
        ) from None
    return settings


def model_args_table() -> str:
    """The markdown table of every model_arg, its default and meaning (EVAL.md's), from the two tables."""
    rows = ["| Argument | Default | Meaning |", "|---|---|---|"]
    for key, item in HARNESS_FIELDS.items():
        default = item.metadata["shown"] or ("unset" if item.default is None else f"`{item.default}`")
        rows.append(f"| `{key}` | {default} | {item.metadata['help']} |")
    for setting in SAMPLER_SETTINGS:
        keys = " or ".join(f"`{key}`" for key in (*setting.harness_names, setting.name))
        fallback = "unset" if setting.fallback is None else f"`{setting.fallback}`"
        choices = f" ({', '.join(map(str, setting.choices))})" if setting.choices else ""
        rows.append(f"| {keys} | the checkpoint's `sampler_defaults`, else {fallback} | {setting.help}{choices} |")
    return "\n".join(rows)
