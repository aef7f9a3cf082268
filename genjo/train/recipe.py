"""The recipe of the embedded tiny models: pre-train the base model, then SFT the instruct model in three
stages (GUIDELINES.md, "Training recipe"). ``python -m genjo.train recipe`` runs it."""

from typing import Optional

from .args import TrainArgs
from .loop import train

# The shipped base model is step 500 of a 1,500-step schedule (the training budget of its session).
RECIPE_PRETRAIN = dict(steps=1500, stop_at=500, batch_size=64, seq_len=64, lr=2e-3, warmup_steps=100,
                       eval_every=250, save_every=250)  # fmt: skip
RECIPE_SFT = [  # three stages, each starting from the previous one's final weights
    # 1. all four families
    dict(steps=3500, batch_size=64, lr=1.5e-3, warmup_steps=100, eval_every=500, save_every=250,
         sft_long_pad_prob=0.15, sft_plain_text=0.25,
         family_weights={"capitals": 0.1, "sorting": 0.25, "reversal": 0.3, "addition": 0.35}),
    # 2. more addition, the family learned last
    dict(steps=3000, batch_size=64, lr=1e-3, warmup_steps=100, eval_every=500, save_every=250,
         sft_long_pad_prob=0.15, sft_plain_text=0.25,
         family_weights={"capitals": 0.1, "sorting": 0.15, "reversal": 0.1, "addition": 0.65}),
    # 3. EOS padding up to 600 tokens, so that answers of gen_length 256 or 512 end in confident EOS
    dict(steps=400, batch_size=64, lr=3e-4, warmup_steps=50, eval_every=200, save_every=100,
         sft_max_len=600, sft_long_pad_prob=0.2, sft_plain_text=0.25,
         family_weights={"capitals": 0.1, "sorting": 0.2, "reversal": 0.15, "addition": 0.55}),
]  # fmt: skip


def reproduce_tiny_models(run_root: str, export_root: Optional[str] = None, seed: int = 0, scale: float = 1.0,
                          experts: Optional[dict] = None) -> None:  # fmt: skip
    """Reproduce the shipped checkpoints: pre-train the base model, then SFT the instruct model.

    experts: optional {num_experts, experts_per_token, expert_hidden_size}: the same recipe for a mixture-of-experts
    model of the tiny model's active size (``--num-experts 8 --experts-per-token 2``), exported under the same names.

    The models are exported to export_root/genjo-tiny-base and export_root/genjo-tiny-instruct
    (default export_root: run_root); the instruct model's config.json gets tinyworld.SAMPLER_DEFAULTS as its
    sampler_defaults. scale multiplies every step count (e.g. 0.1 for a quick trial run).
    """
    export_root = export_root or run_root

    def scaled(stage: dict) -> dict:
        return {k: int(v * scale) if k in ("steps", "stop_at") else v for k, v in stage.items()}

    base = train(TrainArgs(stage="pretrain", run_dir=f"{run_root}/base", seed=seed, **(experts or {}),
                           export=f"{export_root}/genjo-tiny-base", **scaled(RECIPE_PRETRAIN)))  # fmt: skip
    init = base
    for number, stage in enumerate(RECIPE_SFT, start=1):
        last = number == len(RECIPE_SFT)
        init = train(TrainArgs(stage="sft", run_dir=f"{run_root}/instruct-{number}", init=init, seed=seed,
                               export=f"{export_root}/genjo-tiny-instruct" if last else None,
                               **scaled(stage)))  # fmt: skip
