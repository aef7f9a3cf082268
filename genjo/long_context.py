"""Context extension by RoPE base scaling: the NTK critical-dimension law and its diffusion-aware variant.

A RoPE dimension pair j rotates with the wavelength 2 pi b^(2j/d) (b the base, d the head dimension). The
pairs whose wavelength fits in the trained length T_train saw every phase in training; the first one that
does not is the critical dimension, d_crit = 2 ceil((d/2) log_b(T_train / 2 pi)). Scaling the base by

    lambda = b^-1 (T_target / 2 pi)^(d / d_crit)

stretches that dimension's wavelength to the target length, so a position never shows it a phase it did
not see in training (the NTK-aware scaling law; LongLLaDA, arXiv 2506.14429, uses it on the 8B: factors 4,
14, 31 and 55 for 8K, 16K, 24K and 32K from 4096, the law's ceilings). A mask predictor attends both
ways, so in training it saw relative offsets in -T_train..T_train: the diffusion-aware law (UltraLLaDA,
arXiv 2510.10481) puts 2 T_train and 2 T_target in the same formula (562 for 128K from 4096).

``extend_context`` writes the result into a model config (``rope_extension``, ``max_sequence_length``);
``load_model(..., context_length=N)`` and the scripts' ``--context-length`` call it.
"""

import math
import numbers
from typing import Union

ROPE_SCALINGS = ("diffusion-aware", "ntk", "none")  # the laws; a number is an explicit factor
DEFAULT_ROPE_SCALING = "diffusion-aware"


def critical_dimension(train_length: int, rope_theta: float, head_dim: int) -> int:
    """d_crit = 2 ceil((d/2) log_b(T_train / 2 pi)), clamped to 2..d: the dimensions that saw a full period."""
    exact = (head_dim / 2) * math.log(train_length / (2 * math.pi), rope_theta)
    # Rounding off 1e-9 keeps an exact integer (a base chosen to make it one) from ceiling to the next.
    return min(head_dim, max(2, 2 * math.ceil(round(exact, 9))))


def rope_scaling_factor(
    train_length: int, target_length: int, rope_theta: float, head_dim: int, diffusion_aware: bool = False
) -> float:
    """The factor lambda by which to multiply the RoPE base to run a model trained at train_length at
    target_length: the ceiling of b^-1 (T_target / 2 pi)^(d / d_crit) (see the module docstring), with both
    lengths doubled when diffusion_aware (bidirectional attention sees offsets up to +-T). 1.0 when the
    target is not longer than the trained length or the law asks for no stretch.

    For the 8B (train 4096, base 500000, head dim 128): 4, 14, 31, 55 at 8K, 16K, 24K, 32K (plain);
    diffusion-aware 562 at 128K (the law's 561.94 rounded up).
    """
    for name, value in (("train_length", train_length), ("target_length", target_length), ("head_dim", head_dim)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}.")
    if not isinstance(rope_theta, numbers.Real) or not rope_theta > 1:
        raise ValueError(f"rope_theta must be a number > 1 (the RoPE base, e.g. 500000.0); got {rope_theta!r}.")
    if head_dim % 2:
        raise ValueError(f"head_dim must be even (RoPE rotates pairs of dimensions); got {head_dim}.")
    if target_length <= train_length:
        return 1.0
    if diffusion_aware:
        train_length, target_length = 2 * train_length, 2 * target_length
    d_crit = critical_dimension(train_length, rope_theta, head_dim)
    law = (target_length / (2 * math.pi)) ** (head_dim / d_crit) / rope_theta
    return float(max(1, math.ceil(round(law, 9))))


def check_rope_scaling(rope_scaling) -> Union[str, float]:
    """The rope_scaling argument as a law name or a factor >= 1, or a ValueError saying what is accepted.

    A string holding a number ("14") is read as that factor (the command line passes strings).
    """
    if isinstance(rope_scaling, str):
        if rope_scaling in ROPE_SCALINGS:
            return rope_scaling
        try:
            rope_scaling = float(rope_scaling)
        except ValueError:
            raise ValueError(f"rope_scaling must be one of {', '.join(ROPE_SCALINGS)} or a factor >= 1 "
                             f"(e.g. 14); got {rope_scaling!r}.") from None  # fmt: skip
    if isinstance(rope_scaling, bool) or not isinstance(rope_scaling, numbers.Real) or not rope_scaling >= 1:
        raise ValueError(f"rope_scaling must be one of {', '.join(ROPE_SCALINGS)} or a factor >= 1 (e.g. 14); "
                         f"got {rope_scaling!r}.")  # fmt: skip
    if not math.isfinite(rope_scaling):
        raise ValueError(f"rope_scaling must be a finite factor; got {rope_scaling}.")
    return float(rope_scaling)


def check_context_length(context_length) -> None:
    if isinstance(context_length, bool) or not isinstance(context_length, numbers.Integral) or context_length < 1:
        raise ValueError(f"context_length must be a positive int (tokens, e.g. 32768); got {context_length!r}.")


def extend_context(config, context_length: int, rope_scaling=DEFAULT_ROPE_SCALING):
    """Set up a model config (GenjoConfig, changed in place and returned) to run at context_length tokens.

    rope_scaling: "diffusion-aware" (default) or "ntk" (the laws of ``rope_scaling_factor``, from the trained
    length and rope_theta), "none" (direct extrapolation: the base unchanged), or a number (that factor, e.g.
    LongLLaDA's 4/14/31/55). The factor goes into ``config.rope_extension`` (the model's base is rope_theta x
    factor; rope_theta keeps the trained base, so a saved folder extended again is scaled from its trained
    base, never twice) and max_sequence_length grows to context_length (the sampler checks prompt + answer
    against it).

    Nothing changes under a law when the config already covers the length: context_length <=
    max_sequence_length (a folder released for long context that says so), or a recorded factor at least the
    law's (a folder extended further before). The trained length is the recorded ``train_length`` of an
    earlier extension, else max_sequence_length. A folder whose base was raised without saying so (e.g. a
    larger rope_theta but max_sequence_length still the short one) cannot be told apart from a short-context
    model: load it with rope_scaling="none" to keep its base as it is.
    """
    check_context_length(context_length)
    rope_scaling = check_rope_scaling(rope_scaling)
    if not hasattr(config, "rope_base"):  # a config whose model would not read the extended base
        raise ValueError(f"context extension is implemented for the dense Genjo architecture; this checkpoint's "
                         f"config ({type(config).__name__}) does not take it: drop --context-length.")  # fmt: skip
    record = dict(getattr(config, "rope_extension", None) or {})
    current = float(record.get("factor", 1.0))
    train_length = int(record.get("train_length", config.max_sequence_length))
    if isinstance(rope_scaling, float):
        factor, law = rope_scaling, "factor"
    elif rope_scaling == "none":
        if context_length <= config.max_sequence_length:
            return config
        factor, law = current, record.get("rope_scaling", "none")  # keep the base, only allow the length
    else:
        if context_length <= config.max_sequence_length:
            return config
        head_dim = config.d_model // config.n_heads
        factor = rope_scaling_factor(train_length, context_length, config.rope_theta, head_dim,
                                     diffusion_aware=rope_scaling == "diffusion-aware")  # fmt: skip
        law = rope_scaling
        if current >= factor:
            factor, law = current, record.get("rope_scaling", law)
    length = max(context_length, config.max_sequence_length)
    config.rope_extension = dict(rope_scaling=law, factor=factor, train_length=train_length, context_length=length)
    config.max_sequence_length = length
    return config
