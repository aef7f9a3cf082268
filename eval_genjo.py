"""lm-evaluation-harness adapter for Genjo: the model ``genjo_dist``.

The model lives in the package: ``genjo.eval_harness.GenjoEvalHarness`` answers the requests (likelihood
tasks by the Monte-Carlo ELBO of ``genjo.likelihood``, generation tasks by the sampler of ``genjo.sampling``)
and ``genjo.eval_settings`` parses its model_args. This script registers it with lm-eval and is lm-eval's
command line with the model registered:

    python eval_genjo.py --model genjo_dist --tasks hellaswag --batch_size 8 \
        --model_args model_path=/path/to/Genjo-8B-Base,cfg=0.5,mc_num=128,is_check_greedy=False
    python eval_genjo.py --model genjo_dist --tasks gsm8k --apply_chat_template --fewshot_as_multiturn \
        --model_args model_path=/path/to/Genjo-8B-Instruct,gen_length=512,steps=512,block_length=512
    accelerate launch eval_genjo.py ...        # data parallel: lm-eval shards the requests by rank

Instruct models go through lm-eval's own chat path (``apply_chat_template``): few-shot examples as
chat turns, a task's ``gen_prefix`` as the open start of the assistant's answer.

Offline tasks for the embedded models live in ``eval_tasks/`` (``--include_path eval_tasks``);
``evaluate_offline()`` runs them in-process without lm-eval's slow index of built-in tasks.
See EVAL.md and eval_genjo.sh.
"""

import random
from pathlib import Path
from typing import Optional

import torch
from lm_eval.api.registry import register_model

from genjo.cli import run_command
from genjo.eval_harness import ChatPrompt, GenjoEvalHarness, quiet_custom_dataset_hint
from genjo.eval_settings import SEED

__all__ = ["GenjoEvalHarness", "ChatPrompt", "SEED", "TASKS_DIR", "evaluate_offline", "main", "set_seed"]

TASKS_DIR = Path(__file__).resolve().parent / "eval_tasks"

# lm-eval finds the model by this name; registering the same class again (the script run as __main__ and
# imported as eval_genjo) is allowed.
register_model("genjo_dist")(GenjoEvalHarness)


def set_seed(seed: int = SEED) -> None:
    """Seed Python, NumPy and torch (all devices) and make cuDNN deterministic."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def evaluate_offline(tasks, model_args: Optional[dict] = None, limit=None, log_samples: bool = False, lm=None,
                     **kwargs) -> Optional[dict]:  # fmt: skip
    """Run offline tasks of ``eval_tasks/`` with lm-eval's own runner, in this process.

    Builds ``TaskManager(include_path=eval_tasks, include_defaults=False)``, which skips lm-eval's
    index of its ~15k built-in tasks (about 17 s per process). ``model_args``: constructor
    arguments of GenjoEvalHarness, or ``lm``: a GenjoEvalHarness already built. Other keyword
    arguments go to ``lm_eval.simple_evaluate``. Returns its dict (on rank 0; None on other ranks).
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    quiet_custom_dataset_hint()
    task_manager = TaskManager(include_path=[str(TASKS_DIR)], include_defaults=False)
    kwargs.setdefault("bootstrap_iters", 0)
    return lm_eval.simple_evaluate(
        model=lm if lm is not None else "genjo_dist",
        model_args=None if lm is not None else dict(model_args or {}),
        tasks=list(tasks),
        task_manager=task_manager,
        limit=limit,
        log_samples=log_samples,
        **kwargs,
    )


def main() -> None:
    """The lm-eval command line with ``genjo_dist`` registered, seeded as the reference."""
    from lm_eval.__main__ import cli_evaluate

    set_seed(SEED)
    quiet_custom_dataset_hint()
    cli_evaluate()


if __name__ == "__main__":
    run_command(main)
