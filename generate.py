"""The Genjo sampler: reverse masked diffusion (arXiv 2502.09992, Algorithm 4 and 5).

The answer starts as ``gen_length`` masks after the prompt. It is split into blocks decoded left to
right (one block = plain fixed-length diffusion; several = semi-autoregressive). Within a block,
each step runs the mask predictor on the whole canvas, proposes a token for every masked slot, and
commits a scheduled number of them: the most confident (``low_confidence``) or random ones
(``random``). A committed token is never re-masked.

    from generate import generate
    out = generate(model, prompt_ids, steps=128, gen_length=128, block_length=32)
    text = tokenizer.batch_decode(out[:, prompt_ids.shape[1]:], skip_special_tokens=True)
"""

import argparse
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional, Union

import torch

# Token ids of the published 8B vocabulary, used when the model config does not name its own.
MASK_ID = 126336
EOS_ID = 126081  # <|endoftext|>, also the padding token
EOT_ID = 126348  # <|eot_id|>
REMASKING = ("low_confidence", "random")
CACHES = (None, "prefix", "dual")


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


def _config_id(model, name: str, fallback: int) -> int:
    value = getattr(getattr(model, "config", None), name, None)
    return fallback if value is None else int(value)


def _check_int(name: str, value, minimum: Optional[int] = None) -> None:
    """ValueError unless value is an int (not a bool, not a float such as 32.0) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int; got {value!r} ({type(value).__name__}). Pass e.g. {name}=32.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} ({value}) must be >= {minimum}.")


def _check_number(name: str, value, meaning: str = "") -> None:
    """ValueError unless value is a finite real number (an int or a float, not NaN or inf)."""
    if not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number; got {value!r} ({type(value).__name__}).{meaning}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value}.{meaning}")


def _vocabulary_size(model) -> Optional[int]:
    """How many token ids the model can embed (config embedding_size, else vocab_size), or None if unknown."""
    config = getattr(model, "config", None)
    size = getattr(config, "embedding_size", None) or getattr(config, "vocab_size", None)
    return None if size is None else int(size)


def _check_token_ids(name: str, ids: torch.Tensor, model) -> None:
    """ValueError when ids holds a negative id or one the model cannot embed (which would crash in the embedding)."""
    size = _vocabulary_size(model)
    if size is None or ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} holds the token id {bad}, outside the model's vocabulary 0..{size - 1}; "
                         "tokenize with this model's tokenizer.")  # fmt: skip


def _validate(model, prompt, attention_mask, steps, gen_length, block_length, temperature, cfg_scale, remasking,
              mask_id, threshold, factor, cache, refresh_every=None, eos_id=None, eot_id=None,
              step_callback=None):  # fmt: skip
    """Raise a ValueError naming the argument and the fix for any input generate() cannot sample with."""
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
    _check_token_ids("prompt", prompt, model)
    for name, value in (("steps", steps), ("gen_length", gen_length), ("block_length", block_length)):
        _check_int(name, value)
    if gen_length <= 0 or block_length <= 0:
        raise ValueError(f"gen_length ({gen_length}) and block_length ({block_length}) must be positive.")
    if gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length}); "
                         f"e.g. block_length={gen_length} for a single block.")  # fmt: skip
    num_blocks = gen_length // block_length
    if threshold is None and factor is None and (steps <= 0 or steps % num_blocks):
        raise ValueError(f"steps ({steps}) must be a positive multiple of the number of blocks "
                         f"(gen_length / block_length = {num_blocks}).")  # fmt: skip
    if remasking not in REMASKING:
        raise ValueError(f"remasking={remasking!r} is unknown; use one of {', '.join(REMASKING)}.")
    _check_number("temperature", temperature, " Use 0 for greedy decoding or e.g. 0.5 to sample.")
    if temperature < 0:
        raise ValueError(f"temperature ({temperature}) must be >= 0 (0 = greedy).")
    _check_number("cfg_scale", cfg_scale, " Use 0 for no guidance or e.g. 1.0.")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale ({cfg_scale}) must be >= 0 (0 = no classifier-free guidance).")
    if threshold is not None and factor is not None:
        raise ValueError("threshold and factor are exclusive parallel-decoding rules: pass one of them.")
    if (threshold is not None or factor is not None) and remasking != "low_confidence":
        raise ValueError("threshold/factor decoding ranks slots by confidence: use remasking='low_confidence'.")
    if threshold is not None:
        _check_number("threshold", threshold, " It is a confidence, e.g. 0.9 (or None for the steps schedule).")
    if factor is not None:
        _check_number("factor", factor, " Use e.g. 1.0 (or None for the steps schedule).")
        if factor <= 0:
            raise ValueError(f"factor ({factor}) must be > 0.")
    if cache not in CACHES:
        raise ValueError(f"cache={cache!r} is unknown; use None, 'prefix' or 'dual'.")
    if refresh_every is not None:
        _check_int("refresh_every", refresh_every)
        if cache is None or refresh_every < 1:
            raise ValueError("refresh_every needs a cache ('prefix' or 'dual') and must be >= 1.")
    size = _vocabulary_size(model)
    for name, value in (("mask_id", mask_id), ("eos_id", eos_id), ("eot_id", eot_id)):
        if value is not None:
            _check_int(name, value, minimum=0)
            if size is not None and value >= size:
                raise ValueError(f"{name} ({value}) is outside the model's vocabulary 0..{size - 1}; "
                                 "leave it None to use the model config's id.")  # fmt: skip
    if step_callback is not None and not callable(step_callback):
        raise ValueError(f"step_callback must be a function of a StepInfo; got a {type(step_callback).__name__}.")
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


def _check_logits(logits: torch.Tensor, block: int, step: int) -> None:
    """Stop with a clear error when the (guided) logits cannot be decoded: a slot whose logits hold NaN or
    +inf, or are all -inf, has no finite confidence, so it would never be committed (an endless parallel
    loop, or an answer left as masks). A -inf on some tokens (ruled out) is fine.

    logits: (B, N, V) any float dtype. One reduction to (B, N): a slot's max is finite exactly when it is usable.
    """
    top = logits.amax(dim=-1)
    if not bool(torch.isfinite(top).all()):
        bad = float(top[~torch.isfinite(top)][0])
        raise ValueError(f"the model returned non-finite logits ({bad}) at block {block}, step {step}: "
                         "check the weights and dtype (e.g. fp16 overflow), or lower cfg_scale if the "
                         "guidance overflows.")  # fmt: skip


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
    cache: Optional[str] = None,
    early_stop: bool = False,
    stats: Optional[GenerationStats] = None,
    step_callback: Optional[Callable[[StepInfo], None]] = None,
    refresh_every: Optional[int] = None,
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
        remasking: 'low_confidence' commits the most probable proposals, 'random' random ones.
        mask_id, eos_id, eot_id: default to the model config's mask/eos/eot token ids.
        logits_eos_inf: EOS is never proposed.
        confidence_eos_eot_inf: EOS/EoT proposals are committed last (confidence 0).
        threshold: parallel decoding, commit every slot with confidence >= threshold (at least one).
        factor: parallel decoding by the factor rule (see parallel_commit_count).
        cache: None, 'prefix' or 'dual' block-level KV cache. Each block starts with a full forward
            (refresh) that caches every layer's keys/values; later steps run only the block (dual) or
            the block and the suffix (prefix) against the cache. Approximate: cached keys are stale.
        early_stop: at a block's first forward, a row whose every remaining masked slot (block and
            suffix) has EOS as its greedy proposal is filled with EOS and stops; returns when all stop.
        stats: a GenerationStats to fill in place. step_callback: called with a StepInfo after each step.
        refresh_every: with a cache, also refresh every this many steps inside a block (1 = every
            step, which reproduces cache=None exactly).

    Raises:
        ValueError naming the argument for any input it cannot sample with (checked before the first forward),
        and when the model's logits hold NaN/+inf (or are all -inf) at a slot: such slots could never be decoded.

    Returns:
        (B, L + gen_length) int64 canvas on the prompt's device: the prompt, then the answer.
    """
    mask_id = _config_id(model, "mask_token_id", MASK_ID) if mask_id is None else mask_id
    eos_id = _config_id(model, "eos_token_id", EOS_ID) if eos_id is None else eos_id
    eot_id = _config_id(model, "eot_token_id", EOT_ID) if eot_id is None else eot_id
    _validate(model, prompt, attention_mask, steps, gen_length, block_length, temperature, cfg_scale, remasking,
              mask_id, threshold, factor, cache, refresh_every, eos_id, eot_id, step_callback)  # fmt: skip
    started = time.perf_counter()
    user_stats = stats is not None
    stats = stats if user_stats else GenerationStats()
    parallel = threshold is not None or factor is not None
    reference_path = cache is None and not parallel  # token- and RNG-identical to the reference algorithm

    B, L = prompt.shape
    x = torch.full((B, L + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :L] = prompt
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, gen_length)], dim=-1)
    prompt_index = x != mask_id  # (B, T); what the unconditional CFG pass hides
    if cfg_scale > 0 and attention_mask is not None:
        attention_mask = torch.cat([attention_mask, attention_mask])  # cond and uncond rows in one batch

    def model_inputs(canvas: torch.Tensor) -> torch.Tensor:
        """The canvas, plus its unconditional copy (prompt masked) under CFG: (B or 2B, T)."""
        if cfg_scale > 0:
            return torch.cat([canvas, torch.where(prompt_index, mask_id, canvas)])
        return canvas

    def guided(logits: torch.Tensor) -> torch.Tensor:
        """CFG-combined logits (B, n, V) from (2B, n, V): uncond + (cfg_scale + 1) (cond - uncond), in fp32.

        Only the read columns reach here, so fp32 costs little and a bf16 model's difference of two
        close logits is not rounded twice. Without CFG the logits pass through in the model's dtype.
        """
        if cfg_scale > 0:
            cond, uncond = logits.float().chunk(2)
            return uncond + (cfg_scale + 1) * (cond - uncond)
        return logits

    def forward(kind: str, inputs: torch.Tensor, **kwargs):
        t0 = time.perf_counter()
        out = model(inputs, attention_mask=attention_mask, **kwargs)
        if user_stats and inputs.is_cuda:
            torch.cuda.synchronize(inputs.device)
        stats.nfe += 1
        stats.nfe_refresh += kind == "refresh"
        stats.nfe_block += kind == "block"
        stats.forward_time_s[kind] = stats.forward_time_s.get(kind, 0.0) + time.perf_counter() - t0
        return out

    # A model with ``logits_mask`` runs its LM head (and last MLP) only at the columns that are read:
    # the tokens depend on those logits alone, and the canvas-wide (B, T, V) tensor is never built.
    head_at_read_columns = bool(getattr(model, "supports_logits_mask", False))

    def read_logits(kind: str, inputs: torch.Tensor, first: int, last: int, **kwargs):
        """Forward inputs (B or 2B, T_in); returns (guided logits (B, last - first, V) of the input
        columns first:last on the canvas's device, the model output)."""
        if head_at_read_columns and (first, last) != (0, inputs.shape[1]):
            read = torch.zeros(inputs.shape, dtype=torch.bool, device=inputs.device)
            read[:, first:last] = True
            out = forward(kind, inputs, logits_mask=read, **kwargs)
            logits = out.logits.view(inputs.shape[0], last - first, -1)  # row-major (N, V) -> (B, n, V)
        else:
            out = forward(kind, inputs, **kwargs)
            logits = out.logits[:, first:last]
        # Under a device_map accelerate returns the logits on the input's device; this keeps them with the canvas
        # whatever a model does.
        return guided(logits.to(inputs.device)), out

    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    T = x.shape[1]
    row_done = torch.zeros(B, dtype=torch.bool, device=x.device)
    for block in range(num_blocks):
        start, end = L + block * block_length, L + (block + 1) * block_length
        if not bool((x[:, start:end] == mask_id).any()):
            continue  # every row stopped early
        schedule = None if parallel else get_num_transfer_tokens(x[:, start:end] == mask_id, steps_per_block)
        replace_position = None
        if cache == "dual":
            replace_position = torch.zeros((x.shape[0] * (2 if cfg_scale > 0 else 1), x.shape[1]), dtype=torch.bool,
                                           device=x.device)  # fmt: skip
            replace_position[:, start:end] = True
        past = None
        step = 0
        while bool((x[:, start:end] == mask_id).any()) if parallel else step < steps_per_block:
            # 1. Logits of the current block, and of the suffix after it when early stop reads them.
            #    A full forward reads columns start:T at a block's first step under early_stop, else start:end.
            full = cache is None or step == 0 or (refresh_every is not None and step % refresh_every == 0)
            last = T if early_stop and step == 0 and full else end
            if cache is None:
                logits, out = read_logits("full", model_inputs(x), start, last)
            elif full:
                logits, out = read_logits("refresh", model_inputs(x), start, last, use_cache=True)
                past = out.past_key_values
                if cache == "prefix":
                    past = [(k[:, :, :start], v[:, :, :start]) for k, v in past]
            elif cache == "prefix":  # the block and the (masked) suffix attend to the cached prefix
                logits, out = read_logits("block", model_inputs(x)[:, start:], 0, block_length, past_key_values=past)
            else:  # dual: only the block runs; its fresh K/V overwrite the cache in place
                logits, out = read_logits("block", model_inputs(x)[:, start:end], 0, block_length,
                                          past_key_values=past, replace_position=replace_position)  # fmt: skip
            del out  # the cache lives on in `past`; nothing else of the forward is kept
            if logits_eos_inf:
                logits[..., eos_id] = -torch.inf
            block_logits = logits[:, :block_length]  # (B, block_length, V)
            _check_logits(block_logits, block, step)  # NaN/+inf logits would never be committed: stop, don't loop

            # 2. Early stop: a row whose every remaining mask proposes EOS is finished.
            if early_stop and step == 0 and full:
                rest = x[:, start:] == mask_id
                eos_everywhere = ((logits.argmax(-1) == eos_id) | ~rest).all(-1)
                stopped = eos_everywhere & rest.any(-1) & ~row_done
                if bool(stopped.any()):
                    x[:, start:][stopped[:, None] & rest] = eos_id
                    row_done |= stopped
                    stats.rows_early_stopped += int(stopped.sum())
                if bool(row_done.all()):
                    break

            # 3. Proposals x0 and their confidence.
            if reference_path and temperature > 0:
                # The reference draws fp64 noise over the whole (B, T, V) canvas; the same numbers are
                # drawn here, and only the block's are kept and transformed.
                noise = rand_columns((B, T, block_logits.shape[-1]), start, end, torch.float64, x.device)
                noisy = add_gumbel_noise(block_logits, temperature, noise)
                del noise
            else:
                noisy = add_gumbel_noise(block_logits, temperature)
            # A proposed mask id would leave its slot masked forever: never propose it.
            noisy = noisy.index_fill(-1, torch.tensor([mask_id], device=noisy.device), -torch.inf)
            x0 = noisy.argmax(dim=-1)  # (B, block_length)
            del noisy
            if confidence_eos_eot_inf:
                block_logits = block_logits.clone()
                block_logits[..., [eos_id, eot_id]] = -torch.inf
            if remasking == "low_confidence":
                confidence = token_confidence(block_logits, x0)
            elif reference_path:  # the reference draws one number per canvas slot
                confidence = rand_columns(tuple(x.shape), start, end, device=x.device)
            else:
                confidence = torch.rand(x0.shape, device=x.device)
            del logits, block_logits  # not alive across the next forward
            eligible = x[:, start:end] == mask_id  # columns < L and >= end are never eligible
            confidence = torch.where(eligible, confidence, -torch.inf)

            # 4. Commit the scheduled number of most confident proposals (or the parallel rule's).
            count = parallel_commit_count(confidence, threshold, factor) if parallel else schedule[:, step]
            commit = commit_top_k(confidence, count)
            x[:, start:end][commit] = x0[commit]
            stats.committed_per_step.append(int(commit.sum()))

            if step_callback is not None:
                committed = torch.zeros_like(x, dtype=torch.bool)
                committed[:, start:end] = commit
                proposals = x.clone()
                proposals[:, start:end] = torch.where(eligible, x0, x[:, start:end])
                confidence_full = torch.full(x.shape, -torch.inf, device=x.device)
                confidence_full[:, start:end] = confidence
                step_callback(StepInfo(block, step, L, x.clone(), proposals, confidence_full, committed))
            step += 1
        if bool(row_done.all()):
            break

    stats.wall_time_s += time.perf_counter() - started
    return x


DEMO_QUESTIONS = ["What is the capital of France?", "Sort: 7 3 9 1 4", "Reverse: alpha bravo charlie delta"]


def build_parser() -> argparse.ArgumentParser:
    from genjo.batch_generation import DEFAULT_BATCH_SIZE, DEFAULT_SEED, add_sampler_arguments
    from genjo.loading import add_model_arguments

    parser = argparse.ArgumentParser(
        description="Answer prompts with the Genjo sampler. With --input/--output: a JSONL file of requests "
        "('messages' or 'prompt', optional 'id') in, the same lines plus 'answer' out, in input order; resumable, "
        "and data-parallel under `accelerate launch`. Without: answers --question (default: three demo questions).",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--input",
        default=None,
        help="JSONL file of requests, one JSON object per line (default: none, run the demo questions)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="JSONL file of answers; requests already in it are kept, not generated again (default: none)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="prompts per sampler call; one at temperature > 0 or with random remasking (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="base of the per-request seeds used at temperature > 0 or with random remasking (default: %(default)s)",
    )
    parser.add_argument(
        "--question",
        action="append",
        help="a chat question to answer without --input (repeatable; default: three demo questions)",
    )
    return add_sampler_arguments(parser)


def main(argv=None) -> None:
    """Answer a JSONL file of prompts (--input/--output), or the demo questions."""
    from genjo.batch_generation import answer_records, generate_file, process_info, sampler_settings
    from genjo.loading import load_from_args

    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.input is None) != (args.output is None):
        parser.error("--input and --output go together.")
    if args.input is not None and args.question:
        parser.error("--question is for the demo; put the questions in the --input file instead.")
    processes = process_info()
    if processes.device is not None and args.device_map is None:  # under accelerate each process has its device
        args.device = str(processes.device)
    model, tokenizer = load_from_args(args)
    settings = sampler_settings(args, model)

    if args.input is not None:
        summary = generate_file(model, tokenizer, args.input, args.output, settings, batch_size=args.batch_size,
                                seed=args.seed, processes=processes)  # fmt: skip
        if processes.is_main:
            print(summary.line(args.output))
        return
    if not processes.is_main:
        return
    questions = args.question or DEMO_QUESTIONS
    records = [{"messages": [{"role": "user", "content": q}]} for q in questions]
    answers = answer_records(model, tokenizer, records, settings, batch_size=args.batch_size, seed=args.seed)
    for question, answer in zip(questions, answers):
        print(f"Q: {question}\nA: {answer}")
        print("-" * 50)


if __name__ == "__main__":
    main()
