"""Variance-reduced preference optimisation (VRPO, LLaDA 1.5, arXiv 2505.19223): DPO on ELBO estimates.

A masked diffusion model has no exact log p(y | x); its SFT loss gives a Monte-Carlo estimate B(y) of the
lower bound (ELBO). For a prompt x with preferred answer y_w and dispreferred y_l, a policy and a frozen
reference model:

    score = (B_policy(y_w) - B_ref(y_w)) - (B_policy(y_l) - B_ref(y_l))        (the preference score)
    loss  = -log sigmoid(beta * score)

B is the SFT loss's estimate with the opposite sign (genjo/train/losses.py): the prompt is never masked,
each answer slot (the end-of-turn token and EOS padding included) is masked with probability
p = (1 - eps) t + eps at a diffusion time t ~ U(0, 1), and B = -sum over masked slots of CE / p, averaged
over the budget's n noisy copies. The noise of an estimate is an ``ElboNoise``: a budget n = n_time x n_mask
is spent as n_time diffusion times with n_mask masks each:

- ``allocation="optimal"``: n times x 1 mask (the paper's choice: more times, not more masks per time);
- ``allocation="naive"``: 1 time x n masks;
- ``"KxM"``: K times x M masks (K * M = n).

The noise is drawn once, as an object, and can be given to any model: with ``antithetic`` the policy's and
the reference's estimates of the same answer share their times and masks (their errors largely cancel in
the difference), otherwise the reference gets noise of its own. The reference is evaluated without
gradients, and its estimates depend only on the pair and the noise, so they can be computed once and stored
(``reference_elbos``). Each pair's two answers are EOS-padded to the same length, as the rows of an SFT batch
are, so that both estimates count the same slots; rows of different pairs in one forward are right-padded
with an attention mask, so a pair's estimate does not depend on the other pairs of its batch.

    from genjo.train.preference import draw_elbo_noise, elbo_estimates, vrpo_loss
    noise = draw_elbo_noise(ids, prompt_lengths, lengths, budget=8, allocation="optimal", generator=g)
    policy = elbo_estimates(model, ids, lengths, noise, mask_id)                  # (b,) fp32, with gradients
    reference = reference_elbos(reference_model, ids, lengths, noise, mask_id)     # (b,) fp32, no gradients
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .losses import masked_cross_entropy, masking_probability

ALLOCATIONS = ("optimal", "naive")


def parse_allocation(allocation: str, budget: int) -> tuple[int, int]:
    """(n_time, n_mask) of an allocation name for a budget: optimal (budget x 1), naive (1 x budget) or 'KxM'."""
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise ValueError(f"budget must be a positive int (noisy copies per ELBO estimate), not {budget!r}.")
    if allocation == "optimal":
        return budget, 1
    if allocation == "naive":
        return 1, budget
    parts = str(allocation).lower().split("x")
    if len(parts) == 2 and all(part.strip().isdigit() for part in parts):
        n_time, n_mask = (int(part) for part in parts)
        if n_time >= 1 and n_mask >= 1 and n_time * n_mask == budget:
            return n_time, n_mask
        raise ValueError(f"allocation {allocation!r} spends {n_time * n_mask} noisy copies but the budget is "
                         f"{budget}; use K x M = budget, e.g. '{budget}x1'.")  # fmt: skip
    raise ValueError(f"allocation must be 'optimal' (budget times x 1 mask), 'naive' (1 time x budget masks) or "
                     f"'KxM' (K times x M masks, K * M = budget), not {allocation!r}.")  # fmt: skip


@dataclass(frozen=True)
class ElboNoise:
    """The noise of the ELBO estimates of b sequences: n noisy copies each.

    masked: (b, n, L) bool, True at the masked answer slots of each copy (never a prompt or padding column).
    p_mask: (b, n) fp32, the masking probability of each copy (copies of one diffusion time share it).
    Slicing the first dimension gives the noise of a subset of the sequences (``noise[rows]``).
    """

    masked: torch.Tensor
    p_mask: torch.Tensor

    def __getitem__(self, rows) -> "ElboNoise":
        return ElboNoise(self.masked[rows], self.p_mask[rows])

    @property
    def budget(self) -> int:
        return self.masked.shape[1]


def answer_columns(length: int, prompt_lengths: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(b, length) bool: the columns of each row's answer, from its prompt length (b,) to its length (b,)."""
    columns = torch.arange(length, device=prompt_lengths.device)[None, :]
    return (columns >= prompt_lengths[:, None]) & (columns < lengths[:, None])


def draw_elbo_noise(
    input_ids: torch.Tensor,
    prompt_lengths: torch.Tensor,
    lengths: torch.Tensor,
    budget: int = 8,
    allocation: str = "optimal",
    eps: float = 1e-3,
    generator: Optional[torch.Generator] = None,
) -> ElboNoise:
    """The noise of one ELBO estimate of each row of input_ids (b, L) int64: n_time times x n_mask masks.

    prompt_lengths (b,) int64: the prompt is never masked; lengths (b,) int64: columns from a row's length on
    are batch padding, never masked. Per row, n_time times t ~ U(0, 1), p = (1 - eps) t + eps (as SFT), each
    repeated n_mask times; each answer slot of each copy is masked independently with its copy's p.
    generator: a CPU torch.Generator (the same seed gives the same noise on every process).
    """
    n_time, n_mask = parse_allocation(allocation, budget)
    b, length = input_ids.shape
    t = torch.rand((b, n_time), generator=generator)
    p_mask = masking_probability(t, eps).repeat_interleave(n_mask, dim=1)  # (b, n): a time's masks side by side
    draws = torch.rand((b, budget, length), generator=generator)
    answer = answer_columns(length, prompt_lengths.cpu(), lengths.cpu())
    masked = (draws < p_mask[:, :, None]) & answer[:, None, :]
    return ElboNoise(masked.to(input_ids.device), p_mask.to(input_ids.device))


def elbo_estimates(model, input_ids: torch.Tensor, lengths: torch.Tensor, noise: ElboNoise, mask_id: int):
    """B: the Monte-Carlo ELBO of log p(answer | prompt) of each row, in nats: (b,) fp32, differentiable.

    input_ids (b, L) int64 (prompt + answer + EOS padding, then batch padding from lengths (b,) on), noise from
    draw_elbo_noise. Each of the n copies masks its slots; B = -(1 / n) sum_copies sum_masked CE / p, the
    sum(CE / p) of the SFT loss (genjo/train/losses.py) before its division by the answer length. All b x n
    copies run in one forward.
    """
    b, length = input_ids.shape
    n = noise.budget
    rows = input_ids[:, None, :].expand(b, n, length).reshape(b * n, length)
    masked = noise.masked.reshape(b * n, length)
    p_mask = noise.p_mask.reshape(b * n, 1).expand(b * n, length)
    noisy = torch.where(masked, mask_id, rows)
    real = torch.arange(length, device=input_ids.device)[None, :] < lengths[:, None]  # (b, L)
    attention_mask = None if bool(real.all()) else real.long().repeat_interleave(n, dim=0)
    per_slot = masked_cross_entropy(model, noisy, rows, masked, p_mask, attention_mask=attention_mask)  # (b n, L)
    return -per_slot.sum(dim=1).view(b, n).mean(dim=1)


@torch.no_grad()
def reference_elbos(model, input_ids: torch.Tensor, lengths: torch.Tensor, noise: ElboNoise, mask_id: int):
    """elbo_estimates of the frozen reference model, without gradients: (b,) fp32 (store them to reuse)."""
    return elbo_estimates(model, input_ids, lengths, noise, mask_id).detach()


def preference_scores(policy_chosen, reference_chosen, policy_rejected, reference_rejected) -> torch.Tensor:
    """(B_pol(y_w) - B_ref(y_w)) - (B_pol(y_l) - B_ref(y_l)) per pair: (P,) fp32 from four (P,) estimates."""
    return (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)


def vrpo_loss(scores: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean over pairs of -log sigmoid(beta * score): the DPO loss on ELBO estimates (log 2 at score 0)."""
    return -F.logsigmoid(beta * scores).mean()


def chosen_sft_loss(policy_chosen: torch.Tensor, answer_lengths: torch.Tensor) -> torch.Tensor:
    """The SFT loss of the chosen answers from the policy's estimates B(y_w) (P,) fp32: mean over pairs of
    -B(y_w) / answer length (answer_lengths (P,) int64, EOS padding included), as genjo/train/losses.py's."""
    return (-policy_chosen / answer_lengths.to(policy_chosen.dtype)).mean()


@dataclass(frozen=True)
class PreferenceNoise:
    """The noise of a batch of P pairs: the policy's for the chosen and rejected answers, and the reference's.

    With antithetic sampling the reference's noise is the policy's (the same objects).
    """

    chosen: ElboNoise
    rejected: ElboNoise
    reference_chosen: ElboNoise
    reference_rejected: ElboNoise

    @property
    def antithetic(self) -> bool:
        return self.reference_chosen is self.chosen and self.reference_rejected is self.rejected


def draw_preference_noise(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    prompt_lengths: torch.Tensor,
    lengths: torch.Tensor,
    budget: int,
    allocation: str,
    antithetic: bool,
    eps: float,
    generator: torch.Generator,
) -> PreferenceNoise:
    """Noise for P pairs (chosen, rejected: (P, L) int64 of equal lengths (P,)); the reference's shared or own."""
    draw = lambda ids: draw_elbo_noise(ids, prompt_lengths, lengths, budget, allocation, eps, generator)  # noqa: E731
    policy_chosen, policy_rejected = draw(chosen), draw(rejected)
    if antithetic:
        return PreferenceNoise(policy_chosen, policy_rejected, policy_chosen, policy_rejected)
    return PreferenceNoise(policy_chosen, policy_rejected, draw(chosen), draw(rejected))


def pair_elbos(model, chosen, rejected, lengths, chosen_noise: ElboNoise, rejected_noise: ElboNoise, mask_id: int):
    """(B(chosen), B(rejected)), each (P,) fp32, of one model, both answers' copies in one forward."""
    both = torch.cat([chosen, rejected])
    masked = torch.cat([chosen_noise.masked, rejected_noise.masked])
    p_mask = torch.cat([chosen_noise.p_mask, rejected_noise.p_mask])
    estimates = elbo_estimates(model, both, torch.cat([lengths, lengths]), ElboNoise(masked, p_mask), mask_id)
    return estimates.chunk(2)


def reference_pair_elbos(model, chosen, rejected, lengths, noise: PreferenceNoise, mask_id: int):
    """pair_elbos of the frozen reference with the reference's noise, without gradients: two (P,) fp32."""
    with torch.no_grad():
        estimates = pair_elbos(model, chosen, rejected, lengths, noise.reference_chosen, noise.reference_rejected,
                               mask_id)  # fmt: skip
    return tuple(e.detach() for e in estimates)


def pair_scores(
    policy, reference, chosen, rejected, lengths, noise: PreferenceNoise, mask_id: int, reference_elbo=None
):
    """The preference score of each of P pairs: (P,) fp32, differentiable in the policy's weights.

    reference_elbo: optional stored (B_ref(chosen), B_ref(rejected)) for this noise, instead of running the
    reference model.
    """
    policy_chosen, policy_rejected = pair_elbos(policy, chosen, rejected, lengths, noise.chosen, noise.rejected,
                                                mask_id)  # fmt: skip
    if reference_elbo is None:
        reference_elbo = reference_pair_elbos(reference, chosen, rejected, lengths, noise, mask_id)
    return preference_scores(policy_chosen, reference_elbo[0], policy_rejected, reference_elbo[1])


# ----------------------------------------------------------------------------- the training loop's side


def noise_generator(seed: int, step: int, evaluation: bool = False) -> torch.Generator:
    """The CPU generator of a step's noise (or of held-out batch `step`'s fixed noise), the same on every process."""
    return torch.Generator().manual_seed(2 * (seed * 1_000_003 + step) + evaluation + (1 << 40))


def vrpo_step_tensors(args, batch: tuple, step: int) -> tuple:
    """The global tensors of a training step, each with the P pairs first (the loop slices rows and micro-batches).

    batch: (chosen (P, L), rejected (P, L), prompt_lengths (P,), lengths (P,)) from PreferenceData. Returns
    (chosen, rejected, lengths, then masked (P, n, L) and p_mask (P, n) of the policy's chosen and rejected
    noise, then those of the reference's: four Nones with antithetic sampling, which shares the policy's).
    """
    chosen, rejected, prompt_lengths, lengths = batch[:4]
    noise = draw_preference_noise(chosen, rejected, prompt_lengths, lengths, args.budget, args.allocation,
                                  args.antithetic, args.eps, noise_generator(args.seed, step))  # fmt: skip
    own = (noise.reference_chosen, noise.reference_rejected)
    reference = (None,) * 4 if noise.antithetic else tuple(t for e in own for t in (e.masked, e.p_mask))
    return (chosen, rejected, lengths, lengths - prompt_lengths, noise.chosen.masked, noise.chosen.p_mask,
            noise.rejected.masked, noise.rejected.p_mask, *reference)  # fmt: skip


def vrpo_step_loss(model, chosen, rejected, lengths, answer_lengths, *noise_tensors, reference, beta: float,
                   mask_id: int, sft_weight: float = 0.0, attention_bias=None):  # fmt: skip
    """The VRPO loss of a micro-batch of vrpo_step_tensors (the policy `model`, the frozen `reference`), plus
    sft_weight x the chosen answers' SFT loss (the policy's estimates of them, already computed).

    attention_bias: the training loop's document masks of packed rows; preference pairs are never packed (None).
    """
    policy_noise = (ElboNoise(*noise_tensors[0:2]), ElboNoise(*noise_tensors[2:4]))
    if noise_tensors[4] is None:  # antithetic
        noise = PreferenceNoise(*policy_noise, *policy_noise)
    else:
        noise = PreferenceNoise(*policy_noise, ElboNoise(*noise_tensors[4:6]), ElboNoise(*noise_tensors[6:8]))
    policy_chosen, policy_rejected = pair_elbos(model, chosen, rejected, lengths, *policy_noise, mask_id)
    reference_chosen, reference_rejected = reference_pair_elbos(reference, chosen, rejected, lengths, noise, mask_id)
    scores = preference_scores(policy_chosen, reference_chosen, policy_rejected, reference_rejected)
    loss = vrpo_loss(scores, beta)
    if sft_weight:
        loss = loss + sft_weight * chosen_sft_loss(policy_chosen, answer_lengths)
    return loss


def evaluation_noise(args, batch: tuple, index: int) -> PreferenceNoise:
    """The fixed noise of held-out batch `index`: the run's budget, optimal allocation, antithetic, every time."""
    chosen, rejected, prompt_lengths, lengths = batch[:4]
    return draw_preference_noise(chosen, rejected, prompt_lengths, lengths, args.budget, "optimal", True, args.eps,
                                 noise_generator(args.seed, index, evaluation=True))  # fmt: skip


def held_out_parts(args, batches: list, rank: int, world: int, device):
    """This process's share of the held-out batches in grad_accum parts: [(chosen, rejected, lengths, weights,
    PreferenceNoise)], every tensor on `device`."""
    rows = slice(rank * args.batch_size // world, (rank + 1) * args.batch_size // world)
    parts = []
    for index, batch in enumerate(batches):
        noise = evaluation_noise(args, batch, index)
        tensors = (batch[0], batch[1], batch[3], batch[4], noise.chosen.masked, noise.chosen.p_mask,
                   noise.rejected.masked, noise.rejected.p_mask)  # fmt: skip
        for part in zip(*(t[rows].chunk(args.grad_accum) for t in tensors)):
            c, r, lengths, weights, cm, cp, rm, rp = (t.to(device) for t in part)
            elbo = (ElboNoise(cm, cp), ElboNoise(rm, rp))
            parts.append((c, r, lengths, weights, PreferenceNoise(*elbo, *elbo)))
    return parts


def reference_on_held_out(reference, parts: list, mask_id: int) -> list:
    """The reference's (B(chosen), B(rejected)) of every held-out part: computed once, reused at each evaluation."""
    return [reference_pair_elbos(reference, c, r, lengths, noise, mask_id) for c, r, lengths, _, noise in parts]


@torch.no_grad()
def preference_metrics(model, parts: list, stored_reference: list, beta: float, mask_id: int, accelerator) -> dict:
    """Held-out preference accuracy (share of pairs with a positive implicit reward margin), the mean margin
    beta * score, and the mean VRPO loss, over all processes' shares: {"pref_accuracy", "pref_margin",
    "pref_loss"}."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # correct, margin, loss, pairs (weighted)
    for (c, r, lengths, weights, noise), reference_elbo in zip(parts, stored_reference):
        scores = pair_scores(model, None, c, r, lengths, noise, mask_id, reference_elbo)
        margins = beta * scores
        w = weights.double()
        totals += torch.stack([((margins > 0).double() * w).sum(), (margins.double() * w).sum(),
                               (-F.logsigmoid(margins).double() * w).sum(), w.sum()]).cpu()  # fmt: skip
    model.train(was_training)
    totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum").cpu()
    n = max(float(totals[3]), 1.0)
    return {"pref_accuracy": round(float(totals[0]) / n, 4), "pref_margin": float(totals[1]) / n,
            "pref_loss": float(totals[2]) / n}  # fmt: skip


def load_reference(folder: str, accelerator, fsdp: bool):
    """The frozen reference model (the --init checkpoint): on this process's device, no gradients, eval mode.

    Under FSDP it is sharded like the policy (FSDP2 ``fully_shard``, one block per unit, GenjoBlock or
    GenjoMoeBlock, then the root), with the policy's mixed precision (the accelerate config's: bf16 compute on
    GPUs, none in fp32), so each process holds 1 / N of it (docs/vrpo.md, "The 8B"): at step 1 the policy and
    the reference then give the same estimates, as in one process. Its weights are process 0's, broadcast into
    every shard, as accelerate does for the policy: the same whether or not transformers read the checkpoint on
    the other processes (5.x does; ``fsdp_cpu_ram_efficient_loading`` asks it not to). Run on 2 CPU processes
    (gloo, fp32, configs/fsdp_cpu_2proc.yaml); not on GPUs.
    """
    from .model import load_training_model, model_blocks

    reference = load_training_model(folder)
    reference.requires_grad_(False)
    reference.eval()
    if not fsdp:  # on the device, with the policy's autocast (bf16 on CUDA), never wrapped for data parallelism
        return accelerator.prepare_model(reference, evaluation_mode=True)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # The full weights of process 0, kept (as references, not copies) while fully_shard replaces the parameters.
    full_weights = reference.state_dict() if accelerator.is_main_process else {}
    policy = accelerator.state.fsdp_plugin.mixed_precision_policy or MixedPrecisionPolicy()
    reference.to(accelerator.device)
    for block in model_blocks(reference):
        fully_shard(block, mp_policy=policy)
    fully_shard(reference, mp_policy=policy)
    set_model_state_dict(reference, full_weights, options=StateDictOptions(full_state_dict=True,
                                                                           broadcast_from_rank0=True))  # fmt: skip
    return reference
