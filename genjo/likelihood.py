"""Monte-Carlo estimate of the conditional log-likelihood log p(answer | prompt) (arXiv 2502.09992, Eq. 6).

A masked diffusion model has no exact likelihood; its training loss gives a lower bound (ELBO):

    log p(a | p) >= E_{l ~ U{1..T}} E_{l masked slots} [ (T / l) sum_{masked i} log p(a_i | p, noisy a) ]

with T = answer length. Each Monte-Carlo row masks exactly l answer slots; l is stratified across the
rows of a batch (evenly spaced from a random start) to lower the variance. The prompt is never
masked. With a one-token answer every row masks that token, so mc_num = 1 gives log p exactly.

    from genjo import get_log_likelihood, get_log_likelihoods
    ll = get_log_likelihood(model, prompt_ids, answer_ids, mc_num=128)
    lls = get_log_likelihoods(model, [(prompt_ids, choice_ids) for choice_ids in choices], mc_num=128)

``get_log_likelihoods`` scores several pairs (e.g. the choices of one question) with their
Monte-Carlo rows stacked into shared forwards: the same estimates, fewer and fuller forward passes.
"""

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F

from .checks import check_finite_logits, check_int, check_number, check_token_id, check_token_ids, config_int


def stratified_masking(
    batch: torch.Tensor, prompt_index: torch.Tensor, mask_id: int, generator: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask exactly x_i answer slots of row i, with x_i stratified over 1..T.

    batch: (b, L) int64, identical rows of prompt + answer. prompt_index: (L,) bool, True on the
    prompt columns (a prefix). Draw k ~ U{1..T}, x_i = round(k + i T / b) wrapped into 1..T, and mask
    x_i answer slots chosen uniformly at random. generator: optional CPU torch.Generator; the same
    seed gives the same mask counts and positions (common random numbers across the choices of a
    multiple-choice question).
    Returns noisy (b, L) int64 and p_mask (b, L) fp32 = x_i / T (the masking ratio of each row).
    """
    b, length = batch.shape
    target_len = length - int(prompt_index.sum())
    k = int(torch.randint(1, target_len + 1, (), generator=generator))
    x = torch.round(torch.linspace(float(k), k + (b - 1) * (target_len / b), steps=b)).long()
    x = ((x - 1) % target_len) + 1
    assert int(x.min()) >= 1 and int(x.max()) <= target_len

    is_mask = torch.arange(target_len).repeat(b, 1) < x.unsqueeze(1)  # (b, T)
    for i in range(b):
        is_mask[i] = is_mask[i][torch.randperm(target_len, generator=generator)]
    is_mask = torch.cat((torch.zeros(b, length - target_len, dtype=torch.bool), is_mask), dim=1).to(batch.device)
    noisy = torch.where(is_mask, mask_id, batch)
    p_mask = (x.float() / target_len).to(batch.device).unsqueeze(1).expand(b, length)
    return noisy, p_mask


def _model_logits(model, batch, prompt_index, cfg_scale, mask_id, logits_mask=None, attention_mask=None):
    """The raw (cond, uncond) logits of get_logits, uncond None without CFG; both in the model's dtype."""
    kwargs = {}
    if cfg_scale > 0.0:
        un_batch = torch.where(prompt_index, mask_id, batch)
        if logits_mask is not None:
            kwargs["logits_mask"] = torch.cat([logits_mask, logits_mask])
        if attention_mask is not None:
            kwargs["attention_mask"] = torch.cat([attention_mask, attention_mask])
        cond, uncond = model(torch.cat([batch, un_batch]), **kwargs).logits.chunk(2)
        return cond, uncond
    if logits_mask is not None:
        kwargs["logits_mask"] = logits_mask
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    return model(batch, **kwargs).logits, None


def guided_logits(cond: torch.Tensor, uncond: Optional[torch.Tensor], cfg_scale: float) -> torch.Tensor:
    """uncond + (cfg_scale + 1) (cond - uncond) in fp32 (cond itself without CFG)."""
    if uncond is None:
        return cond
    uncond = uncond.float()
    # in place on one fp32 copy: the same values as the formula, without its (N, V) temporaries
    return cond.to(torch.float32, copy=True).sub_(uncond).mul_(cfg_scale + 1).add_(uncond)


def get_logits(
    model,
    batch: torch.Tensor,
    prompt_index: torch.Tensor,
    cfg_scale: float,
    mask_id: int,
    logits_mask: Optional[torch.Tensor] = None,
    attention_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Logits (b, L, V) of the noisy batch, with unsupervised classifier-free guidance when cfg_scale > 0.

    prompt_index: (L,) bool, or (b, L) bool when the rows have prompts of different lengths. The
    unconditional copy masks every prompt column and keeps the answer's noise; both run in one
    forward: logits = un + (cfg_scale + 1) (cond - un), combined in fp32. With logits_mask (b, L)
    bool, only those positions are computed and returned as (N, V) (GenjoModelLM's ``logits_mask``).
    attention_mask (b, L) of 1/0 hides padding keys. Model dtype without CFG, fp32 with it.
    """
    cond, uncond = _model_logits(model, batch, prompt_index, cfg_scale, mask_id, logits_mask, attention_mask)
    return guided_logits(cond, uncond, cfg_scale)


# fp32 elements upcast at a time by the likelihood's log-softmax (16 MiB per temporary)
LOG_SOFTMAX_CHUNK_ELEMENTS = 1 << 22


def log_normalizers(
    cond: torch.Tensor, uncond: Optional[torch.Tensor], cfg_scale: float, chunk: Optional[int] = None
) -> torch.Tensor:
    """logsumexp over V of the guided fp32 logits of every slot: (N,) fp32, from (N, V) cond/uncond.

    Upcast and combined ``chunk`` slots at a time (default: LOG_SOFTMAX_CHUNK_ELEMENTS // V), so the
    fp32 working set stays a few chunk x V tensors whatever the number of rows in the forward; the
    model's own (N, V) output is the only full-size tensor.
    """
    chunk = chunk or max(1, LOG_SOFTMAX_CHUNK_ELEMENTS // cond.shape[-1])
    out = torch.empty(cond.shape[0], dtype=torch.float32, device=cond.device)
    for i in range(0, cond.shape[0], chunk):
        part = guided_logits(cond[i : i + chunk], None if uncond is None else uncond[i : i + chunk], cfg_scale)
        out[i : i + chunk] = torch.logsumexp(part.float(), dim=-1)
    return out


def _as_1d(ids, name: str) -> torch.Tensor:
    """ids (a tensor or a list of ints) as a (n,) int64 tensor; ValueError for floats, bools or other shapes."""
    try:
        tensor = torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"{name} must be a 1-D sequence of int token ids; got {type(ids).__name__} ({error})."
        ) from None
    if tensor.numel() == 0 and not isinstance(ids, torch.Tensor):
        tensor = tensor.long()  # [] is a float tensor by default
    if tensor.dtype.is_floating_point or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must hold int token ids; got dtype {tensor.dtype}. Tokenize the text, or use "
                         f"torch.tensor(ids, dtype=torch.long).")  # fmt: skip
    tensor = tensor.long()
    if tensor.dim() == 2 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 1:
        raise ValueError(
            f"{name} must be a 1-D sequence of token ids (or shape (1, n)); got shape {tuple(tensor.shape)}."
        )
    return tensor


@torch.no_grad()
def get_log_likelihood(
    model,
    prompt: torch.Tensor,
    answer: torch.Tensor,
    mc_num: int = 128,
    batch_size: int = 16,
    cfg_scale: float = 0.0,
    mask_id: Optional[int] = None,
    *,
    generator: Optional[torch.Generator] = None,
    exact_single_token: bool = True,
    deduplicate: bool = True,
) -> float:
    """Monte-Carlo ELBO of log p(answer | prompt), in nats, summed over the answer tokens.

    prompt: (Lp,) int64 token ids (may be empty); answer: (T,) int64, T >= 1. mc_num noisy copies
    are evaluated batch_size at a time (batch_size is lowered to mc_num when larger and must divide
    it). Returns a float: -(1 / mc_num) sum_rows (T / x_row) sum_masked CE.

    generator: a CPU torch.Generator for the masking noise (pass generators seeded alike to score the
    choices of one question with common random numbers). exact_single_token: a one-token answer is
    masked in every sample, so all samples are the same: compute it with a single forward (the
    estimate equals the exact log-probability, as with mc_num=1). deduplicate: run a noisy row that
    was drawn several times once (same estimate; short answers have few distinct maskings).
    """
    estimates = get_log_likelihoods(model, [(prompt, answer)], mc_num, batch_size, cfg_scale, mask_id,
                                    generators=[generator], exact_single_token=exact_single_token,
                                    deduplicate=deduplicate)  # fmt: skip
    return estimates[0]


@torch.no_grad()
def get_log_likelihoods(
    model,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    mc_num: int = 128,
    batch_size: int = 16,
    cfg_scale: float = 0.0,
    mask_id: Optional[int] = None,
    *,
    generators: Optional[Sequence[Optional[torch.Generator]]] = None,
    exact_single_token: bool = True,
    deduplicate: bool = True,
) -> list[float]:
    """``get_log_likelihood`` of several (prompt, answer) pairs, their Monte-Carlo rows sharing forwards.

    Pair i draws its mc_num noisy rows from generators[i] exactly as ``get_log_likelihood`` would
    (a one-token pair: its single exact row). With deduplicate, a row drawn k times is run once and
    counted k times, also across pairs (with common random numbers, two choices that differ only at
    masked slots draw the same noisy row). The distinct rows of all pairs are run batch_size to a
    forward, right-padded with an attention mask. The estimates equal those of each pair alone up to
    float rounding. Returns one float per pair, in order.
    """
    mask_id = check_token_id("mask_id", config_int(model, "mask_token_id") if mask_id is None else mask_id, model)
    mc_num = check_int("mc_num", mc_num, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    cfg_scale = check_number("cfg_scale", cfg_scale, " Use 0 for no guidance or e.g. 1.0.")
    if not pairs:
        return []
    generators = [None] * len(pairs) if generators is None else list(generators)
    if len(generators) != len(pairs):
        raise ValueError(f"got {len(generators)} generators for {len(pairs)} pairs; give one per pair (or None).")
    for generator in generators:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generators must hold torch.Generator objects or None; got a {type(generator).__name__}.")
    batch_size = min(batch_size, mc_num)
    if mc_num % batch_size:
        raise ValueError(f"batch_size ({batch_size}) must divide mc_num ({mc_num}); e.g. use powers of two.")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale ({cfg_scale}) must be >= 0.")
    max_len = getattr(getattr(model, "config", None), "max_sequence_length", None)
    device = model.device if hasattr(model, "device") else torch.device("cpu")

    sequences, prompt_lengths = [], []
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"pairs must hold (prompt, answer) pairs of token ids; got a {type(pair).__name__}.")
        prompt, answer = _as_1d(pair[0], "prompt"), _as_1d(pair[1], "answer")
        if answer.numel() == 0:
            raise ValueError("answer is empty: the likelihood of nothing is not defined; give at least one token.")
        if bool((answer == mask_id).any()):
            raise ValueError(f"answer contains the mask id {mask_id}; it cannot be scored.")
        if max_len is not None and prompt.numel() + answer.numel() > max_len:
            raise ValueError(f"prompt + answer ({prompt.numel() + answer.numel()} tokens) exceed the model's "
                             f"max_sequence_length ({max_len}); truncate the prompt from the left.")  # fmt: skip
        check_token_ids("prompt", prompt, model)
        check_token_ids("answer", answer, model)
        sequences.append(torch.cat([prompt, answer]).to(device))
        prompt_lengths.append(prompt.numel())

    # Draw every pair's noisy rows first (cheap; the same draws, in the same order, as one pair alone),
    # then run each distinct row once, weighted by how often it was drawn. A T-token answer has only
    # 2^T - 1 maskings, so for short answers many of the mc_num rows repeat and cost nothing; and with
    # common random numbers, choices that differ only under the mask give the very same noisy row.
    rows: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # distinct (noisy (L,), masked (L,), prompt length)
    uses: list[list[tuple[int, float]]] = []  # per row: (pair, weight of the row's summed CE for that pair)
    row_of: dict = {}  # (prompt length, noisy tokens) -> index in rows
    for i, seq in enumerate(sequences):
        length, answer_length = seq.numel(), seq.numel() - prompt_lengths[i]
        single = exact_single_token and answer_length == 1  # every sample masks the one token: one row is exact
        n_rows, n_batches = (1, 1) if single else (batch_size, mc_num // batch_size)
        prompt_index = torch.arange(length, device=device) < prompt_lengths[i]
        batch = seq[None, :].repeat(n_rows, 1)  # (b, L_i)
        noisy = torch.cat(
            [stratified_masking(batch, prompt_index, mask_id, generators[i])[0] for _ in range(n_batches)]
        )
        counts = torch.ones(noisy.shape[0], device=device)
        if deduplicate:
            noisy, counts = torch.unique(noisy, dim=0, return_counts=True)
        masked = (noisy == mask_id) & ~prompt_index  # a mask id inside the prompt is not an answer slot
        # weight = (count / rows drawn) / p_mask with p_mask = masked / T: the estimator's 1/p weighting
        weights = (counts.float() / (n_rows * n_batches) * answer_length / masked.sum(1).float()).tolist()
        for r, weight in enumerate(weights):
            key = (prompt_lengths[i], tuple(noisy[r].tolist())) if deduplicate else len(rows)
            if key not in row_of:
                row_of[key] = len(rows)
                rows.append((noisy[r], masked[r], prompt_lengths[i]))
                uses.append([])
            uses[row_of[key]].append((i, weight))

    head_at_masks = getattr(model, "supports_logits_mask", False)
    pad_id = config_int(model, "pad_token_id", 0)
    totals = torch.zeros(len(pairs), dtype=torch.float64, device=device)  # summed weighted CE per pair
    for start in range(0, len(rows), batch_size):  # batch_size rows per forward, whichever pairs they serve
        chunk = rows[start : start + batch_size]
        lengths = torch.tensor([n.numel() for n, _, _ in chunk], device=device)
        longest = int(lengths.max())
        noisy = torch.stack([F.pad(n, (0, longest - n.numel()), value=pad_id) for n, _, _ in chunk])  # (b, L)
        masked = torch.stack([F.pad(m, (0, longest - m.numel()), value=False) for _, m, _ in chunk])  # (b, L)
        columns = torch.arange(longest, device=device)[None, :]
        prompt_index = columns < torch.tensor([p for _, _, p in chunk], device=device)[:, None]
        real = columns < lengths[:, None]  # (b, L): False on right padding
        attention_mask = None if bool(real.all()) else real.long()
        if head_at_masks:  # (N, V) each, N = masked slots of the chunk
            cond, uncond = _model_logits(model, noisy, prompt_index, cfg_scale, mask_id, masked, attention_mask)
        else:
            cond, uncond = _model_logits(model, noisy, prompt_index, cfg_scale, mask_id, attention_mask=attention_mask)
            cond, uncond = cond[masked], None if uncond is None else uncond[masked]
        log_normalizer = log_normalizers(cond, uncond, cfg_scale)  # (N,)
        # NaN or +inf anywhere in a slot's logits (or all -inf) makes its logsumexp non-finite
        check_finite_logits(log_normalizer, f"in the likelihood's forward {start // batch_size}")
        # CE of every use of every row: a row shared by several pairs is scored against each one's answer
        slots, targets, use_pairs, use_weights = [], [], [], []
        first_slot = 0
        for r, (_, row_masked, _) in enumerate(chunk):
            positions = row_masked.nonzero().squeeze(1)  # (n_r,) masked columns of this row
            row_slots = torch.arange(first_slot, first_slot + positions.numel(), device=device)
            first_slot += positions.numel()
            for i, weight in uses[start + r]:
                slots.append(row_slots)
                targets.append(sequences[i][positions])
                use_pairs += [i] * positions.numel()
                use_weights += [weight] * positions.numel()
        slots, targets = torch.cat(slots), torch.cat(targets)
        chosen = guided_logits(cond[slots, targets], None if uncond is None else uncond[slots, targets], cfg_scale)
        ce = log_normalizer[slots] - chosen.float()  # (M,) -log p(target) at every used slot
        del cond, uncond
        weighted = ce * torch.tensor(use_weights, device=device)
        totals.index_add_(0, torch.tensor(use_pairs, device=device), weighted.double())
    return (-totals).tolist()
