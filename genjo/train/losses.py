"""The training objectives: the forward process (Bernoulli masking), the losses, and their registry.

Every loss has one signature, ``loss(model, input_ids, prompt_lengths, noisy, masked, p_mask) -> scalar``:
input_ids (b, L) int64; prompt_lengths (b,) int64 for SFT rows (the prompt is never masked and has no
loss) or None for pre-training rows; noisy (b, L) int64, masked (b, L) bool and p_mask (b, L) fp32 are the
step's masking noise (``step_noise``), which an objective may ignore; the keyword ``attention_bias``, (b, 1, L, L)
bool or None, hides keys from queries (document-level masks of packed rows, genjo/train/data.py). A new
objective is a new entry of OBJECTIVES (a loss, and whether its model attends causally), not an edit of the
training loop.

A mixture-of-experts model (config.num_experts) also trains its routers' load-balancing loss, whatever the
objective: ``objective_and_router_loss`` adds ``router_aux_loss_coef`` x that loss (the Switch/Mixtral form,
modeling_genjo_moe.load_balancing_loss) of the forwards the objective runs.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


def forward_process(input_ids: torch.Tensor, mask_id: int, eps: float = 1e-3, generator=None):
    """Bernoulli masking of the pre-training forward process.

    input_ids: (b, L) int64. Per row t ~ U(0, 1) and p = (1 - eps) t + eps; each token becomes the
    mask with probability p. Returns (noisy (b, L) int64, masked (b, L) bool, p_mask (b, L) fp32).
    """
    b, length = input_ids.shape
    t = torch.rand(b, generator=generator, device=input_ids.device)
    p_mask = masking_probability(t, eps)[:, None].expand(b, length)
    masked = torch.rand((b, length), generator=generator, device=input_ids.device) < p_mask
    return torch.where(masked, mask_id, input_ids), masked, p_mask


def masking_probability(t: torch.Tensor, eps: float) -> torch.Tensor:
    """p = (1 - eps) t + eps: the masking probability at diffusion time t (any shape, fp32), never below eps."""
    return (1 - eps) * t + eps


def step_noise(seed: int, stage: str, eps: float, input_ids: torch.Tensor, mask_id: int, step: int):
    """The forward-process noise of a training step, the same on every process: forward_process's triple."""
    stream = 2 * (seed * 1_000_003 + step) + (stage == "sft")  # not hash(): salted per process
    generator = torch.Generator().manual_seed(stream)
    return forward_process(input_ids, mask_id, eps, generator)


def masked_cross_entropy(model, noisy, targets, masked, p_mask, attention_bias=None, attention_mask=None):
    """Per-slot CE / p at masked slots, zero elsewhere: (b, L) fp32.

    attention_bias: optional (b, 1, L, L) bool document masks of packed rows; attention_mask: optional (b, L)
    int64 of 1/0 hiding right padding (rows of different lengths in one forward, preference pairs).
    """
    # Only rows that need a mask pass one, so any callable model(ids) still serves the others.
    masks = {name: mask for name, mask in (("attention_bias", attention_bias), ("attention_mask", attention_mask))
             if mask is not None}  # fmt: skip
    logits = model(noisy, **masks).logits
    ce = F.cross_entropy(logits[masked].float(), targets[masked], reduction="none")
    out = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    out[masked] = ce / p_mask[masked]
    return out


def pretrain_loss(model, input_ids, noisy, masked, p_mask, attention_bias=None) -> torch.Tensor:
    """sum(CE / p) / (b * L) over the masked slots of a (b, L) batch."""
    return masked_cross_entropy(model, noisy, input_ids, masked, p_mask, attention_bias).sum() / input_ids.numel()


def sft_loss(model, input_ids, prompt_lengths, noisy, masked, p_mask, attention_bias=None) -> torch.Tensor:
    """Mean over rows of sum(CE / p) / answer_length, the prompt restored and never masked.

    input_ids: (b, L); prompt_lengths: (b,). answer_length counts every column after the prompt,
    the EOS padding included. attention_bias: (b, 1, L, L) bool or None, e.g. document masks of rows whose
    prompt packs several documents (the context-extension experiment's post-training).
    """
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)
    prompt_index = columns[None, :] < prompt_lengths[:, None]
    noisy = torch.where(prompt_index, input_ids, noisy)
    masked = masked & ~prompt_index
    per_slot = masked_cross_entropy(model, noisy, input_ids, masked, p_mask, attention_bias)
    answer_lengths = input_ids.shape[1] - prompt_lengths
    return (per_slot.sum(dim=1) / answer_lengths).mean()


def ar_loss(model, input_ids, prompt_lengths=None, attention_bias=None) -> torch.Tensor:
    """Next-token cross-entropy of a causal model (the autoregressive twin), mean over predicted slots.

    input_ids: (b, L) int64. Column j's logits predict token j + 1. With prompt_lengths (b,) (SFT),
    only answer tokens (columns >= the prompt length, EOS padding included) are predicted.
    """
    out = model(input_ids) if attention_bias is None else model(input_ids, attention_bias=attention_bias)
    logits = out.logits[:, :-1].float()  # (b, L - 1, V)
    targets = input_ids[:, 1:]
    if prompt_lengths is not None:
        columns = torch.arange(1, input_ids.shape[1], device=input_ids.device)
        targets = targets.masked_fill(columns[None, :] < prompt_lengths[:, None], -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def masked_diffusion_loss(
    model, input_ids, prompt_lengths: Optional[torch.Tensor], noisy, masked, p_mask, attention_bias=None
):
    """pretrain_loss for pre-training rows (prompt_lengths None), sft_loss for SFT rows."""
    if prompt_lengths is None:
        return pretrain_loss(model, input_ids, noisy, masked, p_mask, attention_bias)
    return sft_loss(model, input_ids, prompt_lengths, noisy, masked, p_mask, attention_bias)


def next_token_loss(model, input_ids, prompt_lengths: Optional[torch.Tensor], *noise, attention_bias=None):
    """ar_loss with the registry's signature (the masking noise is not used)."""
    return ar_loss(model, input_ids, prompt_lengths, attention_bias)


@dataclass(frozen=True)
class Objective:
    """A training objective: its loss (the module docstring's signature) and the attention of its model."""

    loss: Callable[..., torch.Tensor]
    causal: bool  # trains causal models (config.causal); False: bidirectional mask predictors
    help: str


OBJECTIVES = {
    "mdm": Objective(masked_diffusion_loss, causal=False, help="masked diffusion"),
    "ar": Objective(
        next_token_loss,
        causal=True,
        help="a causal model on the next-token loss (the autoregressive twin)",
    ),
}


class RouterLossProbe:
    """The model as an objective calls it, asking each forward for its routers' load-balancing loss
    (``output_router_logits``) and keeping it: the objectives' signatures stay as they are."""

    def __init__(self, model):
        self.model, self.losses = model, []

    def __call__(self, *args, **kwargs):
        out = self.model(*args, output_router_logits=True, **kwargs)
        if out.aux_loss is not None:
            self.losses.append(out.aux_loss)
        return out


def objective_and_router_loss(loss_fn: Callable[..., torch.Tensor], model, batch, router_coef: Optional[float],
                              **kwargs):  # fmt: skip
    """loss_fn's loss on batch (its arguments after the model, and kwargs), and for a mixture-of-experts model
    (router_coef not None) plus router_coef x the mean load-balancing loss of its forwards.

    Returns (the loss to minimise, the objective's loss, the unweighted load-balancing loss or None), scalars.
    """
    if router_coef is None:
        loss = loss_fn(model, *batch, **kwargs)
        return loss, loss, None
    probe = RouterLossProbe(model)
    loss = loss_fn(probe, *batch, **kwargs)
    router = torch.stack(probe.losses).mean()
    return loss + router_coef * router, loss, router
