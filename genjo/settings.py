"""The one table of sampler settings: every script's sampler flags, the eval harness's model_args, and the
fallback for a setting that neither the user nor the checkpoint sets.

A setting left unset is resolved in one place, ``resolve_sampler_settings``: the value the user gave, else the
checkpoint's own (config.json ``sampler_defaults``), else the table's fallback. The fallbacks are ``generate()``'s
keyword defaults (the original sampler's signature), so a call of ``generate()`` with no settings and a script
run on a checkpoint without ``sampler_defaults`` sample the same way.

    parser = add_sampler_arguments(argparse.ArgumentParser())      # --gen-length, --steps, ... --early-stop
    settings = resolve_sampler_settings(parser.parse_args(), model)  # generate() keyword arguments
    out = generate(model, prompt, **settings)
"""

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from .sampling import CACHES, REMASKING_RULES


@dataclass(frozen=True)
class SamplerSetting:
    """One ``generate()`` keyword: its flag ``--name-with-dashes``, type, fallback and meaning."""

    name: str  # the generate() keyword
    type: type  # int, float, str or bool (bool: --x / --no-x)
    fallback: Any  # generate()'s own default; used when neither the user nor the checkpoint sets it
    help: str
    choices: Optional[tuple] = None
    aliases: tuple[str, ...] = ()  # older flag spellings, still accepted, not shown in --help
    harness_names: tuple[str, ...] = ()  # extra model_args spellings the eval harness accepts (the original's)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SAMPLER_SETTINGS = (
    SamplerSetting("gen_length", int, 128, "answer length in tokens"),
    SamplerSetting("steps", int, 128, "sampling steps (forward passes) in all, split evenly across blocks"),
    SamplerSetting("block_length", int, 128, "tokens per block, decoded left to right (gen_length for one block)"),
    SamplerSetting("temperature", float, 0.0, "0 = greedy; > 0 samples by Gumbel-max in float64"),
    SamplerSetting(
        "cfg_scale", float, 0.0, "classifier-free guidance scale (0 = none)", aliases=("--cfg",), harness_names=("cfg",)
    ),  # fmt: skip
    SamplerSetting(
        "remasking",
        str,
        "low_confidence",
        "which proposals a step commits: the most confident or random ones",
        choices=tuple(REMASKING_RULES),
    ),  # fmt: skip
    SamplerSetting("logits_eos_inf", bool, False, "never propose EOS", aliases=("--eos-inf",)),
    SamplerSetting("confidence_eos_eot_inf", bool, False, "commit EOS/EoT proposals last"),
    SamplerSetting(
        "threshold", float, None, "parallel decoding: commit every slot with confidence >= this (at least one)"
    ),  # fmt: skip
    SamplerSetting("factor", float, None, "parallel decoding by the factor rule (exclusive with --threshold)"),
    SamplerSetting(
        "cache",
        str,
        None,
        "block-level KV cache (approximate, faster)",
        choices=tuple(c for c in CACHES if c is not None),
    ),  # fmt: skip
    SamplerSetting("early_stop", bool, False, "stop a row once every remaining slot proposes EOS"),
)
SETTINGS = {setting.name: setting for setting in SAMPLER_SETTINGS}
FALLBACKS = {setting.name: setting.fallback for setting in SAMPLER_SETTINGS}
# The settings a checkpoint's sampler_defaults may hold and the scripts' answers depend on most.
CORE_SETTINGS = ("gen_length", "steps", "block_length", "temperature", "cfg_scale", "remasking")


def checkpoint_sampler_defaults(model) -> dict:
    """The checkpoint's own sampler settings (config.json ``sampler_defaults``), or {} when it names none."""
    return dict(getattr(getattr(model, "config", None), "sampler_defaults", None) or {})


def add_sampler_arguments(
    parser: argparse.ArgumentParser, names: Optional[Iterable[str]] = None
) -> argparse.ArgumentParser:
    """Add one flag per setting (all of them, or those in ``names``), each defaulting to None = unset.

    The help of each flag names its fallback; the older spellings in ``aliases`` are accepted but not listed.
    """
    chosen = [SETTINGS[name] for name in (names if names is not None else SETTINGS)]
    group = parser.add_argument_group("sampler (unset flags take the checkpoint's sampler_defaults, else these)")
    for setting in chosen:
        shown = "none" if setting.fallback is None else setting.fallback
        help_text = f"{setting.help} (default: the checkpoint's setting, else {shown})"
        if setting.type is bool:
            add_renamed_argument(group, setting.flag, *setting.aliases, action=argparse.BooleanOptionalAction,
                                 default=None, help=help_text)  # fmt: skip
        else:
            add_renamed_argument(group, setting.flag, *setting.aliases, type=setting.type, default=None,
                                 choices=setting.choices, help=help_text)  # fmt: skip
    return parser


class _BooleanWithHiddenSpellings(argparse.BooleanOptionalAction):
    """BooleanOptionalAction that also obeys its hidden spellings: the stock one sets the value only for an
    option string still in ``option_strings``, so ``--eos-inf`` would parse and silently do nothing."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not (option_string or "").startswith("--no-"))


def add_renamed_argument(parser, flag: str, *old_spellings: str, **kwargs) -> argparse.Action:
    """``parser.add_argument(flag, **kwargs)`` that also accepts the flag's older spellings, unlisted.

    For flags renamed to the spelling shared by every script (``--cfg`` -> ``--cfg-scale``, ``--out`` ->
    ``--output``): command lines written for the old name keep working, while --help, the usage line and
    error messages show ``flag`` alone. parser: an ArgumentParser or an argument group. The value lands
    under ``flag``'s name (``args.cfg_scale``); a BooleanOptionalAction's ``--no-`` forms of the old
    spellings are hidden too.
    """
    if kwargs.get("action") is argparse.BooleanOptionalAction:
        kwargs["action"] = _BooleanWithHiddenSpellings
    action = parser.add_argument(flag, *old_spellings, **kwargs)
    # The old spellings stay in the parser's table of option strings (so they parse) but leave the action's
    # own list, which is what --help, the usage line and error messages print.
    hidden = {*old_spellings, *("--no-" + spelling[2:] for spelling in old_spellings)}
    action.option_strings = [option for option in action.option_strings if option not in hidden]
    return action


def resolve_sampler_settings(given, model=None, names: Optional[Iterable[str]] = None) -> dict:
    """``generate()`` keyword arguments: each setting the user gave (not None), else the checkpoint's
    ``sampler_defaults``, else the table's fallback.

    given: an argparse namespace of ``add_sampler_arguments`` or a mapping of setting names to values.
    names: the settings to return (default: all of them).
    """
    values = given if isinstance(given, Mapping) else vars(given)
    own = checkpoint_sampler_defaults(model)
    settings = {}
    for name in names if names is not None else SETTINGS:
        value = values.get(name)
        settings[name] = value if value is not None else own.get(name, FALLBACKS[name])
    return settings


def is_stochastic(settings: Mapping) -> bool:
    """Whether the sampler draws random numbers with these settings: at temperature > 0, or with a remasking
    rule declared stochastic (``genjo.sampling.REMASKING_RULES``). Such requests cannot share a batch."""
    rule = REMASKING_RULES[settings.get("remasking", FALLBACKS["remasking"])]
    return settings.get("temperature", FALLBACKS["temperature"]) > 0 or rule.stochastic
