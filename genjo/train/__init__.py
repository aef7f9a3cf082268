"""Pre-training, supervised fine-tuning and preference optimisation (VRPO) of Genjo mask predictors (and their
autoregressive twins).

    from genjo.train import TrainArgs, train
    final_folder = train(TrainArgs(stage="sft", init="runs/base/final", data="chats.jsonl", steps=2000))

``python -m genjo.train --help`` lists every stage and flag. The modules, one job each:

- ``args``: TrainArgs (every setting of a run), the command line's parser and help texts, check_args;
- ``losses``: the forward process (Bernoulli masking), the masked-diffusion and next-token losses, and
  OBJECTIVES, the registry the loop takes its loss from (a new objective is a new entry there);
- ``data``: global batches of the synthetic tiny world and of your files; ``files``: the JSON-lines readers;
- ``model``: a new model, one loaded to start from, gradient checkpointing, saving a checkpoint;
- ``loop``: train(), the optimizer and learning-rate schedule, evaluation during training, resumable state;
- ``preference``: VRPO (LLaDA 1.5): ELBO estimates under a budget and an allocation, their noise (reusable across
  the policy and the reference: antithetic sampling), the loss, held-out preference accuracy (docs/vrpo.md);
- ``pairs``: preference pairs from a model's own answers labelled by a checker (``python -m genjo.train.pairs``);
- ``recipe``: the recipe of the embedded tiny models; ``cli``: the command line (``__main__`` runs it).
"""

from .args import TrainArgs, build_parser, check_args
from .cli import main
from .data import FileData, StepData, TinyWorldData, packed_rows, pretrain_batch, sft_batch, training_data
from .loop import evaluate, learning_rate, make_optimizer, train, validation_loss
from .losses import OBJECTIVES, Objective, ar_loss, forward_process, masked_cross_entropy, pretrain_loss, sft_loss
from .model import enable_gradient_checkpointing, new_model, save_checkpoint
from .preference import ElboNoise, draw_elbo_noise, elbo_estimates, reference_elbos, vrpo_loss
from .recipe import reproduce_tiny_models

__all__ = [
    "OBJECTIVES",
    "ElboNoise",
    "draw_elbo_noise",
    "elbo_estimates",
    "reference_elbos",
    "vrpo_loss",
    "FileData",
    "Objective",
    "TinyWorldData",
    "TrainArgs",
    "ar_loss",
    "build_parser",
    "check_args",
    "enable_gradient_checkpointing",
    "evaluate",
    "forward_process",
    "learning_rate",
    "main",
    "make_optimizer",
    "masked_cross_entropy",
    "new_model",
    "packed_rows",
    "StepData",
    "pretrain_batch",
    "pretrain_loss",
    "reproduce_tiny_models",
    "save_checkpoint",
    "sft_batch",
    "sft_loss",
    "train",
    "training_data",
    "validation_loss",
]
