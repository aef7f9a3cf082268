"""The Genjo sampler: reverse masked diffusion (arXiv 2502.09992, Algorithms 4 and 5).

The answer starts as ``gen_length`` masks after the prompt. It is split into blocks decoded left to
right (one block = plain fixed-length diffusion; several = semi-autoregressive). Within a block,
each step runs the mask predictor, proposes a token for every masked slot, and commits a scheduled
number of them: the most confident (``low_confidence``) or random ones (``random``). A committed
token is never re-masked.

    from genjo import generate
    out = generate(model, prompt_ids, steps=128, gen_length=128, block_length=32)
    text = tokenizer.batch_decode(out[:, prompt_ids.shape[1]:], skip_special_tokens=True)

The pieces a reader can put beside the paper's algorithm:
- ``generate``: per block, per step: logits of the block, proposals x0, confidence, commit.
- How a step gets its logits: ``FullCanvas`` (the reference: every step runs the whole canvas),
  ``PrefixCache`` and ``DualCache`` (Fast-dLLM's block-level KV caches, arXiv 2505.22618).
- Which proposals are committed first: ``REMASKING_RULES`` (each declares whether it draws random numbers).
- How many: ``get_num_transfer_tokens`` (the linear schedule) or ``parallel_commit_count`` (threshold/factor).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Union

import torch

from .checks import (
    EOS_ID,
    EOT_ID,
    MASK_ID,
    as_scalar,
    check_finite_logits,
    check_int,
    check_number,
    check_token_id,
    check_token_ids,
    config_int,
)

__all__ = [
    "CACHES", "EOS_ID", "EOT_ID", "MASK_ID", "REMASKING", "REMASKING_RULES", "DualCache", "FullCanvas",
    "GenerationStats", "PrefixCache", "RemaskingRule", "StepInfo", "add_gumbel_noise", "check_sampler_settings",
    "commit_top_k", "generate", "get_num_transfer_tokens", "parallel_commit_count", "rand_columns",
    "token_confidence",
]  # fmt: skip


@dataclass
class GenerationStats:
    """Filled in place by ``generate(..., stats=GenerationStats())``; the return value never changes."""

    nfe: int = 0  # forward calls (a CFG call counts once)
    nfe_refresh: int = 0  # full-canvas forwards that (re)build a KV cache
    nfe_block: int = 0  # cached forwards over the current block
    committed_per_step: list[int] = field(default_factory=list)  # tokens committed per forward (all rows)
    rows_early_stopped: int = 0
    wall_time_s: float = 0.0
    forward_time_s: dict[str, float] = field(default_factory=dict)  # per forward kind: full, refresh, block

    @property
    def tokens_per_forward(self) -> float:
        return sum(self.committed_per_step) / max(self.nfe, 1)


@dataclass
class StepInfo:
    """What ``step_callback`` receives after every step. Tensors are (B, L + gen_length)."""

    block: int  # block index
    step: int  # step index within the block
    prompt_length: int  # L: the answer starts at this column
    canvas: torch.Tensor  # int64, after this step's commits
    proposals: torch.Tensor  # int64, x0 at the eligible slots, the canvas elsewhere
    confidence: torch.Tensor  # fp32, confidence at the eligible slots, -inf elsewhere
    committed: torch.Tensor  # bool, slots committed by this step


# ----------------------------------------------------------------------------- proposals and commits


def add_gumbel_noise(logits: torch.Tensor, temperature: float, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Noised logits whose argmax is a sample from softmax(logits / temperature).

    Gumbel-max in float64: exp(logits) / (-log u)^T with u ~ U(0, 1), monotone in
    logits / T + Gumbel noise. Low precision hurts sample quality (arXiv 2409.02908).
    logits: (..., V) any float dtype. noise: optional float64 uniforms u of logits' shape (drawn with
    ``torch.rand_like(logits, dtype=torch.float64)`` when None); it is overwritten.
    Returns float64 (or the logits unchanged when T == 0).
    """
    if temperature == 0:
        return logits
    if noise is None:
        noise = torch.rand_like(logits, dtype=torch.float64)
    # In place on the two fp64 tensors: the same values as the out-of-place formula, a third of the memory.
    gumbel_noise = noise.log_().neg_().pow_(temperature)
    return logits.to(torch.float64, copy=True).exp_().div_(gumbel_noise)


def rand_columns(shape: tuple[int, ...], start: int, end: int, dtype: Optional[torch.dtype] = None,
                 device: Union[str, torch.device, None] = None) -> torch.Tensor:  # fmt: skip
    """``torch.rand(shape, dtype=dtype, device=device)[:, start:end]`` without holding the whole tensor.

    The same numbers, and the global generator ends in the same state. shape: (B, T, ...); returns
    (B, end - start, ...). On CPU the generator hands out its stream in order whatever the split of a
    draw (tests/test_generate.py checks it), so the columns outside start:end are drawn into a scratch
    buffer of at most end - start columns and dropped. Other devices (CUDA's Philox offsets depend on
    the launch shape) draw the whole tensor once and keep a copy of the slice.
    """
    dtype = dtype or torch.get_default_dtype()
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cpu":
        return torch.rand(shape, dtype=dtype, device=device)[:, start:end].clone()
    B, T, rest = shape[0], shape[1], tuple(shape[2:])
    out = torch.empty((B, end - start, *rest), dtype=dtype)
    scratch = torch.empty((max(1, min(end - start, max(start, T - end))), *rest), dtype=dtype)

    def skip(columns: int) -> None:
        while columns > 0:
            n = min(columns, scratch.shape[0])
            scratch[:n].uniform_()
            columns -= n

    for row in range(B):
        skip(start)
        out[row].uniform_()
        skip(T - end)
    return out


def get_num_transfer_tokens(block_mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """How many masks to commit at each step of a block: (B, steps) int64.

    The linear noise schedule unmasks the same expected number of tokens per step, so each row's n
    masks are spread as n // steps per step, plus one in the first n % steps steps
    (10 masks over 4 steps: [3, 3, 2, 2]).
    block_mask_index: (B, block_length) bool, the masked slots at the start of the block.
    """
    mask_num = block_mask_index.sum(dim=1, keepdim=True)  # (B, 1)
    base = mask_num // steps
    remainder = mask_num % steps
    num_transfer_tokens = base.expand(-1, steps).clone()
    num_transfer_tokens += torch.arange(steps, device=block_mask_index.device) < remainder
    return num_transfer_tokens.to(torch.int64)


def token_confidence(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """softmax(logits)[tokens] in fp32, as exp(l[token] - logsumexp(l)).

    logits: (..., V); tokens: (...) int64. Returns (...) float32.
    """
    logits = logits.float()
    chosen = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return torch.exp(chosen - torch.logsumexp(logits, dim=-1))


def commit_top_k(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per row, the k[j] most confident slots: (B, N) bool.

    Stable descending sort, so ties go to the lower column. Slots with confidence -inf (not
    eligible) are never chosen. confidence: (B, N) fp32; k: (B,) int64.
    """
    order = torch.sort(confidence, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (rank < k.unsqueeze(-1)) & (confidence > -torch.inf)


def parallel_commit_count(
    confidence: torch.Tensor, threshold: Optional[float], factor: Optional[float]
) -> torch.Tensor:
    """How many slots a parallel-decoding step commits per row: (B,) int64.

    confidence: (B, N) fp32, -inf where not eligible. The most confident eligible slot is always
    committed (so every step makes progress), then:
    - threshold tau: every other slot with confidence >= tau;
    - factor f: sorted c(1) >= c(2) >= ..., rank n >= 2 passes while (n + 1)(1 - c(n)) < f; ranks
      up to the first failure (excluded) are committed. When the first failure is the last rank it is
      not committed either (the prior implementation committed it), so f -> 0 commits exactly one.
    """
    eligible = confidence > -torch.inf
    if threshold is not None:
        passes = eligible & (confidence >= threshold)
        return torch.maximum(passes.sum(-1), eligible.any(-1).long())
    sorted_conf = torch.sort(confidence, dim=-1, descending=True).values
    rank = torch.arange(1, confidence.shape[-1] + 1, device=confidence.device)
    passes = ((rank + 1) * (1 - sorted_conf) < factor) | (rank == 1)
    passes &= sorted_conf > -torch.inf
    return passes.long().cumprod(-1).sum(-1)


# A function that draws uniform numbers in [0, 1) of shape (B, block_length, *extra): uniforms(extra, dtype).
Uniforms = Callable[[tuple, torch.dtype], torch.Tensor]


class RemaskingRule(NamedTuple):
    """Which proposals a step commits first: ``confidence(block_logits, x0, uniforms)`` -> (B, n) fp32, higher
    first. ``stochastic``: the rule draws random numbers, so a row's result depends on its batch (batch
    generation then runs such requests one at a time, under their own seeds)."""

    confidence: Callable[[torch.Tensor, torch.Tensor, Uniforms], torch.Tensor]
    stochastic: bool


def low_confidence(block_logits: torch.Tensor, x0: torch.Tensor, uniforms: Uniforms) -> torch.Tensor:
    """The probability of each proposal (temperature 1, no noise): the most probable are committed first."""
    return token_confidence(block_logits, x0)


def random_confidence(block_logits: torch.Tensor, x0: torch.Tensor, uniforms: Uniforms) -> torch.Tensor:
    """U(0, 1) per slot: random proposals are committed."""
    return uniforms((), torch.float32)


REMASKING_RULES = {
    "low_confidence": RemaskingRule(low_confidence, stochastic=False),
    "random": RemaskingRule(random_confidence, stochastic=True),
}
REMASKING = tuple(REMASKING_RULES)


def propose(block_logits: torch.Tensor, temperature: float, mask_id: int, uniforms: Uniforms) -> torch.Tensor:
    """x0: the argmax of the Gumbel-noised logits, never the mask id (which would leave its slot masked forever).

    block_logits: (B, n, V) any float dtype. Returns (B, n) int64.
    """
    noise = uniforms((block_logits.shape[-1],), torch.float64) if temperature > 0 else None
    noisy = add_gumbel_noise(block_logits, temperature, noise)
    del noise
    noisy = noisy.index_fill(-1, torch.tensor([mask_id], device=noisy.device), -torch.inf)
    return noisy.argmax(dim=-1)


def block_uniforms(canvas_shape: tuple[int, int], start: int, end: int, device, like_reference: bool) -> Uniforms:
    """The uniforms of block start:end. ``like_reference``: drawn as the reference does, for the whole canvas
    (only the block's numbers are kept, see ``rand_columns``), so its random stream is reproduced exactly."""

    def uniforms(extra: tuple, dtype: torch.dtype) -> torch.Tensor:
        if like_reference:
            return rand_columns((*canvas_shape, *extra), start, end, dtype, device)
        return torch.rand((canvas_shape[0], end - start, *extra), dtype=dtype, device=device)

    return uniforms


# ----------------------------------------------------------------------------- the mask predictor, with CFG


class MaskPredictor:
    """The model as the sampler calls it: unsupervised CFG, logits only at the columns read, forward counts.

    canvas_prompt: (B, T) bool, the prompt columns (what the unconditional CFG pass masks).
    attention_mask: (B, T) of 1/0 over the whole canvas, or None.
    """

    def __init__(self, model, canvas_prompt, attention_mask, cfg_scale: float, mask_id: int, stats: GenerationStats,
                 sync_timing: bool):  # fmt: skip
        self.model, self.prompt_index, self.cfg_scale, self.mask_id = model, canvas_prompt, cfg_scale, mask_id
        if cfg_scale > 0 and attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask])  # cond and uncond rows in one batch
        self.attention_mask, self.stats, self.sync_timing = attention_mask, stats, sync_timing
        # A model with ``logits_mask`` runs its LM head (and last MLP) only at the columns that are read:
        # the tokens depend on those logits alone, and the canvas-wide (B, T, V) tensor is never built.
        self.head_at_read_columns = bool(getattr(model, "supports_logits_mask", False))

    def inputs(self, canvas: torch.Tensor) -> torch.Tensor:
        """The canvas, plus its unconditional copy (prompt masked) under CFG: (B or 2B, T)."""
        if self.cfg_scale > 0:
            return torch.cat([canvas, torch.where(self.prompt_index, self.mask_id, canvas)])
        return canvas

    def guided(self, logits: torch.Tensor) -> torch.Tensor:
        """CFG-combined logits (B, n, V) from (2B, n, V): uncond + (cfg_scale + 1) (cond - uncond), in fp32.

        Only the read columns reach here, so fp32 costs little and a bf16 model's difference of two
        close logits is not rounded twice. Without CFG the logits pass through in the model's dtype.
        """
        if self.cfg_scale > 0:
            cond, uncond = logits.float().chunk(2)
            return uncond + (self.cfg_scale + 1) * (cond - uncond)
        return logits

    def __call__(self, kind: str, inputs: torch.Tensor, first: int, last: int, **kwargs):
        """Forward inputs (B or 2B, T_in) as a forward of ``kind`` (full, refresh, block); returns (guided logits
        (B, last - first, V) of the input columns first:last on the canvas's device, the model output)."""
        t0 = time.perf_counter()
        if self.head_at_read_columns and (first, last) != (0, inputs.shape[1]):
            read = torch.zeros(inputs.shape, dtype=torch.bool, device=inputs.device)
            read[:, first:last] = True
            out = self.model(inputs, attention_mask=self.attention_mask, logits_mask=read, **kwargs)
            logits = out.logits.view(inputs.shape[0], last - first, -1)  # row-major (N, V) -> (B, n, V)
        else:
            out = self.model(inputs, attention_mask=self.attention_mask, **kwargs)
            logits = out.logits[:, first:last]
        if self.sync_timing and inputs.is_cuda:
            torch.cuda.synchronize(inputs.device)
        stats = self.stats
        stats.nfe += 1
        stats.nfe_refresh += kind == "refresh"
        stats.nfe_block += kind == "block"
        stats.forward_time_s[kind] = stats.forward_time_s.get(kind, 0.0) + time.perf_counter() - t0
        # Under a device_map accelerate returns the logits on the input's device; this keeps them with the canvas
        # whatever a model does.
        return self.guided(logits.to(inputs.device)), out


# ----------------------------------------------------------------------------- how a step gets its logits


class FullCanvas:
    """The reference: every step runs the mask predictor on the whole canvas."""

    def start_block(self, start: int, end: int) -> None:
        pass

    def logits(self, predictor: MaskPredictor, canvas: torch.Tensor, step: int, start: int, end: int, last: int):
        """Guided logits of the canvas columns start:last, (B, last - start, V)."""
        return predictor("full", predictor.inputs(canvas), start, last)[0]


class PrefixCache:
    """A block's first step runs the whole canvas and keeps the keys/values of the prefix (the columns before
    the block); later steps run the block and the masked suffix against them. Approximate: the suffix's and
    the committed tokens' effect on the prefix is not recomputed until the next block.

    refresh_every: also run the whole canvas every this many steps inside a block (1 = every step, which
    gives exactly the tokens of ``FullCanvas``; a test knob).
    """

    def __init__(self, refresh_every: Optional[int] = None):
        if refresh_every is not None:
            check_int("refresh_every", refresh_every)
            if refresh_every < 1:
                raise ValueError(f"refresh_every needs a cache and must be >= 1; got {refresh_every}.")
        self.refresh_every = refresh_every
        self.past = None

    def start_block(self, start: int, end: int) -> None:
        self.past = None

    def refreshes(self, step: int) -> bool:
        return step == 0 or (self.refresh_every is not None and step % self.refresh_every == 0)

    def refresh(self, predictor: MaskPredictor, canvas: torch.Tensor, start: int, end: int, last: int):
        """A full forward that caches every layer's keys/values; returns the guided logits of start:last."""
        logits, out = predictor("refresh", predictor.inputs(canvas), start, last, use_cache=True)
        self.past = [(k[:, :, :start], v[:, :, :start]) for k, v in out.past_key_values]
        return logits

    def logits(self, predictor: MaskPredictor, canvas: torch.Tensor, step: int, start: int, end: int, last: int):
        if self.refreshes(step):
            return self.refresh(predictor, canvas, start, end, last)
        inputs = predictor.inputs(canvas)[:, start:]  # the block and the (masked) suffix attend to the prefix
        return predictor("block", inputs, 0, end - start, past_key_values=self.past)[0]


class DualCache(PrefixCache):
    """Like ``PrefixCache``, but the suffix's keys/values are cached too: later steps run only the block,
    whose fresh keys/values overwrite its columns of the cache in place (``replace_position``)."""

    def refresh(self, predictor: MaskPredictor, canvas: torch.Tensor, start: int, end: int, last: int):
        inputs = predictor.inputs(canvas)
        logits, out = predictor("refresh", inputs, start, last, use_cache=True)
        self.past = out.past_key_values
        self.replace_position = torch.zeros(inputs.shape, dtype=torch.bool, device=inputs.device)
        self.replace_position[:, start:end] = True
        return logits

    def logits(self, predictor: MaskPredictor, canvas: torch.Tensor, step: int, start: int, end: int, last: int):
        if self.refreshes(step):
            return self.refresh(predictor, canvas, start, end, last)
        inputs = predictor.inputs(canvas)[:, start:end]
        return predictor("block", inputs, 0, end - start, past_key_values=self.past,
                         replace_position=self.replace_position)[0]  # fmt: skip


CACHES = {None: FullCanvas, "prefix": PrefixCache, "dual": DualCache}


# ----------------------------------------------------------------------------- checks


def check_sampler_settings(model=None, *, steps, gen_length, block_length, temperature=0.0, cfg_scale=0.0,
                           remasking="low_confidence", threshold=None, factor=None, cache=None, mask_id=None,
                           eos_id=None, eot_id=None, step_callback=None, **ignored) -> None:  # fmt: skip
    """Raise a ValueError naming the setting and the fix for any setting generate() cannot sample with.

    Scripts call it before they ask for a prompt (model may be None: no vocabulary checks). ``ignored``
    takes the other generate() keywords (e.g. logits_eos_inf), so a whole settings dict can be passed.
    """
    lengths = (("steps", steps), ("gen_length", gen_length), ("block_length", block_length))
    steps, gen_length, block_length = (check_int(name, value) for name, value in lengths)
    if gen_length <= 0 or block_length <= 0:
        raise ValueError(f"gen_length ({gen_length}) and block_length ({block_length}) must be positive.")
    if gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length}); "
                         f"e.g. block_length={gen_length} for a single block.")  # fmt: skip
    num_blocks = gen_length // block_length
    if threshold is None and factor is None and (steps <= 0 or steps % num_blocks):
        raise ValueError(f"steps ({steps}) must be a positive multiple of the number of blocks "
                         f"(gen_length / block_length = {num_blocks}).")  # fmt: skip
    if remasking not in REMASKING_RULES:
        raise ValueError(f"remasking={remasking!r} is unknown; use one of {', '.join(REMASKING)}.")
    temperature = check_number("temperature", temperature, " Use 0 for greedy decoding or e.g. 0.5 to sample.")
    if temperature < 0:
        raise ValueError(f"temperature ({temperature}) must be >= 0 (0 = greedy).")
    cfg_scale = check_number("cfg_scale", cfg_scale, " Use 0 for no guidance or e.g. 1.0.")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale ({cfg_scale}) must be >= 0 (0 = no classifier-free guidance).")
    if threshold is not None and factor is not None:
        raise ValueError("threshold and factor are exclusive parallel-decoding rules: pass one of them.")
    if (threshold is not None or factor is not None) and remasking != "low_confidence":
        raise ValueError("threshold/factor decoding ranks slots by confidence: use remasking='low_confidence'.")
    if threshold is not None:
        check_number("threshold", threshold, " It is a confidence, e.g. 0.9 (or None for the steps schedule).")
    if factor is not None:
        factor = check_number("factor", factor, " Use e.g. 1.0 (or None for the steps schedule).")
        if factor <= 0:
            raise ValueError(f"factor ({factor}) must be > 0.")
    if not isinstance(cache, (FullCanvas, PrefixCache)) and (not isinstance(cache, (str, type(None)))
                                                             or cache not in CACHES):  # fmt: skip
        raise ValueError(f"cache={cache!r} is unknown; use None, 'prefix' or 'dual'.")
    ids = {
        name: check_token_id(name, value, model)
        for name, value in (("mask_id", mask_id), ("eos_id", eos_id), ("eot_id", eot_id))
        if value is not None
    }
    for other in ("eos_id", "eot_id"):
        if "mask_id" in ids and ids["mask_id"] == ids.get(other):
            raise ValueError(f"mask_id equals {other} ({ids['mask_id']}): the mask would be read as the end of the "
                             "answer; leave mask_id None to use the model config's mask_token_id.")  # fmt: skip
    if step_callback is not None and not callable(step_callback):
        raise ValueError(f"step_callback must be a function of a StepInfo; got a {type(step_callback).__name__}.")


def check_prompt(model, prompt) -> None:
    """Raise a ValueError naming the argument for a prompt generate() cannot sample from."""
    if not isinstance(prompt, torch.Tensor):
        raise ValueError(f"prompt must be an int64 tensor of shape (batch, length); got a {type(prompt).__name__}. "
                         "For one prompt use torch.tensor([ids]).")  # fmt: skip
    if prompt.dim() != 2:
        raise ValueError(f"prompt must be an int64 tensor of shape (batch, length); got shape {tuple(prompt.shape)}. "
                         "For one prompt use torch.tensor(ids).unsqueeze(0).")  # fmt: skip
    if prompt.dtype != torch.long:
        raise ValueError(f"prompt must be an int64 (torch.long) tensor of token ids; got dtype {prompt.dtype}. "
                         "Convert it with prompt.long().")  # fmt: skip
    if prompt.shape[1] == 0:
        raise ValueError("prompt is empty: give at least one token (e.g. the chat template's BOS).")
    check_token_ids("prompt", prompt, model)


def check_canvas(model, prompt: torch.Tensor, attention_mask, gen_length: int, mask_id: int) -> None:
    """Raise a ValueError for a canvas longer than the model's context, or an attention mask that does not fit."""
    max_len = getattr(getattr(model, "config", None), "max_sequence_length", None)
    if max_len is not None and prompt.shape[1] + gen_length > max_len:
        raise ValueError(f"prompt length ({prompt.shape[1]}) + gen_length ({gen_length}) exceeds the model's "
                         f"max_sequence_length ({max_len}); shorten the prompt or gen_length.")  # fmt: skip
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise ValueError(f"attention_mask must be a tensor of 1 (token) / 0 (padding) shaped like the prompt; "
                             f"got a {type(attention_mask).__name__}. Use torch.tensor(mask).")  # fmt: skip
        if attention_mask.shape != prompt.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; it must match the "
                             f"prompt's {tuple(prompt.shape)}.")  # fmt: skip
        if attention_mask.is_complex() or not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must hold only 1 (token) and 0 (padding); got other values.")
        if bool((prompt[attention_mask == 0] == mask_id).any()):
            raise ValueError(f"the padding id equals the mask id ({mask_id}) where attention_mask is 0: pad the "
                             "prompt with the EOS token instead (tokenizer.pad_token_id), or the padding would be "
                             "decoded as answer.")  # fmt: skip
        if not bool(attention_mask.bool().any(dim=1).all()):
            raise ValueError("a row of attention_mask is all zeros: every prompt needs at least one real token.")


def check_decodable(block_logits: torch.Tensor, block: int, step: int) -> None:
    """Stop with a clear error when the (guided) logits cannot be decoded: a slot whose logits hold NaN or
    +inf, or are all -inf, has no finite confidence, so it would never be committed (an endless parallel
    loop, or an answer left as masks). A -inf on some tokens (ruled out) is fine.

    block_logits: (B, N, V) any float dtype. One reduction to (B, N): a slot's max is finite exactly when it is usable.
    """
    check_finite_logits(block_logits.amax(dim=-1), f"at block {block}, step {step}")


def stop_finished_rows(canvas: torch.Tensor, logits: torch.Tensor, start: int, mask_id: int, eos_id: int,
                       row_done: torch.Tensor) -> int:  # fmt: skip
    """Early stop: a row whose every remaining masked slot (block and suffix) proposes EOS greedily is filled
    with EOS. logits: (B, T - start, V) of the columns start:. Updates canvas and row_done (B,) bool in place;
    returns how many rows stopped now."""
    rest = canvas[:, start:] == mask_id
    eos_everywhere = ((logits.argmax(-1) == eos_id) | ~rest).all(-1)
    stopped = eos_everywhere & rest.any(-1) & ~row_done
    if bool(stopped.any()):
        canvas[:, start:][stopped[:, None] & rest] = eos_id
        row_done |= stopped
    return int(stopped.sum())


def step_info(block: int, step: int, prompt_length: int, canvas: torch.Tensor, start: int, end: int,
              x0: torch.Tensor, confidence: torch.Tensor, commit: torch.Tensor) -> StepInfo:  # fmt: skip
    """The block's tensors of one step spread onto the canvas's columns, for ``step_callback``."""
    committed = torch.zeros_like(canvas, dtype=torch.bool)
    committed[:, start:end] = commit
    proposals = canvas.clone()
    proposals[:, start:end] = torch.where(confidence > -torch.inf, x0, canvas[:, start:end])
    confidence_full = torch.full(canvas.shape, -torch.inf, device=canvas.device)
    confidence_full[:, start:end] = confidence
    return StepInfo(block, step, prompt_length, canvas.clone(), proposals, confidence_full, committed)


# ----------------------------------------------------------------------------- the sampler


@torch.no_grad()
def generate(
    model,
    prompt: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    steps: int = 128,
    gen_length: int = 128,
    block_length: int = 128,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    mask_id: Optional[int] = None,
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    *,
    eos_id: Optional[int] = None,
    eot_id: Optional[int] = None,
    threshold: Optional[float] = None,
    factor: Optional[float] = None,
    cache: Union[str, None, FullCanvas] = None,
    early_stop: bool = False,
    stats: Optional[GenerationStats] = None,
    step_callback: Optional[Callable[[StepInfo], None]] = None,
) -> torch.Tensor:
    """Sample an answer of gen_length tokens for each prompt by reverse masked diffusion.

    Args:
        model: a mask predictor returning ``.logits`` (B, T, V), e.g. GenjoModelLM; one whose
            ``supports_logits_mask`` is true is asked only for the logits that are read.
        prompt: (B, L) int64, left-padded when B > 1.
        attention_mask: (B, L) of 1 (token) / 0 (padding), or None. Padding must not be the mask id.
        steps: forward passes in all (steps / number of blocks per block). Ignored by threshold/factor.
        gen_length: answer slots G. block_length: slots per block (G for one block).
        temperature: 0 = greedy; > 0 samples by Gumbel-max in float64 (the noise is kept for the block only).
        cfg_scale: unsupervised classifier-free guidance; the unconditional pass masks the prompt.
        remasking: a rule of ``REMASKING_RULES``: 'low_confidence' commits the most probable proposals,
            'random' random ones.
        mask_id, eos_id, eot_id: default to the model config's mask/eos/eot token ids.
        logits_eos_inf: EOS is never proposed.
        confidence_eos_eot_inf: EOS/EoT proposals are committed last (confidence 0).
        threshold: parallel decoding, commit every slot with confidence >= threshold (at least one).
        factor: parallel decoding by the factor rule (see parallel_commit_count).
        cache: None (``FullCanvas``), 'prefix' (``PrefixCache``) or 'dual' (``DualCache``), or such an object.
        early_stop: at a block's first forward, a row whose every remaining masked slot (block and
            suffix) has EOS as its greedy proposal is filled with EOS and stops; returns when all stop.
        stats: a GenerationStats to fill in place. step_callback: called with a StepInfo after each step.

    Raises:
        ValueError naming the argument for any input it cannot sample with (checked before the first forward),
        and when the model's logits hold NaN/+inf (or are all -inf) at a slot: such slots could never be decoded.

    Returns:
        (B, L + gen_length) int64 canvas on the prompt's device: the prompt, then the answer.
    """
    if model is None or not callable(model):
        raise ValueError(f"model must be a mask predictor returning .logits (e.g. a loaded GenjoModelLM); got "
                         f"{type(model).__name__}. Load one with genjo.load_model().")  # fmt: skip
    if stats is not None and not isinstance(stats, GenerationStats):
        raise ValueError(f"stats must be a GenerationStats to fill (or None); got a {type(stats).__name__}.")
    # 0-d tensors (e.g. torch.tensor(64) from a schedule) become the plain numbers they hold
    steps, gen_length, block_length, temperature, cfg_scale, threshold, factor, mask_id, eos_id, eot_id = (
        as_scalar(v) for v in (steps, gen_length, block_length, temperature, cfg_scale, threshold, factor, mask_id,
                               eos_id, eot_id))  # fmt: skip
    mask_id = config_int(model, "mask_token_id") if mask_id is None else mask_id
    eos_id = config_int(model, "eos_token_id") if eos_id is None else eos_id
    eot_id = config_int(model, "eot_token_id") if eot_id is None else eot_id
    check_prompt(model, prompt)
    check_sampler_settings(model, steps=steps, gen_length=gen_length, block_length=block_length,
                           temperature=temperature, cfg_scale=cfg_scale, remasking=remasking, threshold=threshold,
                           factor=factor, cache=cache, mask_id=mask_id, eos_id=eos_id, eot_id=eot_id,
                           step_callback=step_callback)  # fmt: skip
    check_canvas(model, prompt, attention_mask, gen_length, mask_id)
    started = time.perf_counter()
    sync_timing, stats = stats is not None, stats if stats is not None else GenerationStats()
    parallel = threshold is not None or factor is not None
    strategy = CACHES[cache]() if cache is None or isinstance(cache, str) else cache
    # Only the reference path (no cache, the steps schedule) draws its random numbers as the reference does.
    like_reference = isinstance(strategy, FullCanvas) and not parallel
    rule = REMASKING_RULES[remasking]

    B, L = prompt.shape
    x = torch.full((B, L + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :L] = prompt
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, gen_length)], dim=-1)
    predictor = MaskPredictor(model, x != mask_id, attention_mask, cfg_scale, mask_id, stats, sync_timing)
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    row_done = torch.zeros(B, dtype=torch.bool, device=x.device)
    for block in range(num_blocks):
        start, end = L + block * block_length, L + (block + 1) * block_length
        if not bool((x[:, start:end] == mask_id).any()):
            continue  # every row stopped early
        schedule = None if parallel else get_num_transfer_tokens(x[:, start:end] == mask_id, steps_per_block)
        strategy.start_block(start, end)
        step = 0
        while bool((x[:, start:end] == mask_id).any()) if parallel else step < steps_per_block:
            # 1. Logits of the block (and of the suffix after it at a block's first step, for early stop).
            logits = strategy.logits(predictor, x, step, start, end, x.shape[1] if early_stop and step == 0 else end)
            if logits_eos_inf:
                logits[..., eos_id] = -torch.inf
            block_logits = logits[:, :block_length]  # (B, block_length, V)
            check_decodable(block_logits, block, step)
            if early_stop and step == 0:  # a row whose every remaining mask proposes EOS is finished
                stats.rows_early_stopped += stop_finished_rows(x, logits, start, mask_id, eos_id, row_done)
                if bool(row_done.all()):
                    break

            # 2. Proposals x0 and their confidence.
            uniforms = block_uniforms(tuple(x.shape), start, end, x.device, like_reference)
            x0 = propose(block_logits, temperature, mask_id, uniforms)  # (B, block_length)
            if confidence_eos_eot_inf:
                block_logits = block_logits.clone()
                block_logits[..., [eos_id, eot_id]] = -torch.inf
            confidence = rule.confidence(block_logits, x0, uniforms)  # (B, block_length) fp32
            del logits, block_logits  # not alive across the next forward
            confidence = torch.where(x[:, start:end] == mask_id, confidence, -torch.inf)  # only masks are eligible

            # 3. Commit the scheduled number of most confident proposals (or the parallel rule's).
            count = parallel_commit_count(confidence, threshold, factor) if parallel else schedule[:, step]
            commit = commit_top_k(confidence, count)
            x[:, start:end][commit] = x0[commit]
            stats.committed_per_step.append(int(commit.sum()))
            if step_callback is not None:
                step_callback(step_info(block, step, L, x, start, end, x0, confidence, commit))
            step += 1
        if bool(row_done.all()):
            break

    stats.wall_time_s += time.perf_counter() - started
    return x
