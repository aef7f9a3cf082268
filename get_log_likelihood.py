"""Estimate log p(answer | prompt) with a masked diffusion model: a Monte-Carlo lower bound (ELBO, in nats).

    python get_log_likelihood.py --prompt "The capital of France is" --answer " Paris."

The estimator lives in ``genjo.likelihood``; this script re-exports it, so notebooks keep writing

    from get_log_likelihood import get_log_likelihood, get_log_likelihoods
    ll = get_log_likelihood(model, prompt_ids, answer_ids, mc_num=128)
"""

import argparse

import torch

from genjo.chat_format import encode_plain
from genjo.cli import run_command
from genjo.likelihood import (  # noqa: F401 - re-exported for `from get_log_likelihood import ...`
    get_log_likelihood,
    get_log_likelihoods,
    get_logits,
    stratified_masking,
)
from genjo.loading import DEFAULT_BASE_MODEL, add_model_arguments, load_from_args
from genjo.settings import add_sampler_arguments, resolve_sampler_settings


def main() -> None:
    """Print the estimate for a prompt/answer pair (each tokenized without BOS)."""
    parser = add_model_arguments(argparse.ArgumentParser(description=main.__doc__), default=DEFAULT_BASE_MODEL)
    parser.add_argument("--prompt", default="The capital of France is",
                        help="the conditioning text, tokenized without BOS (default: %(default)r)")  # fmt: skip
    parser.add_argument("--answer", default=" Paris.",
                        help="the text whose log-likelihood is estimated; mind its leading space "
                             "(default: %(default)r)")  # fmt: skip
    parser.add_argument("--mc-num", type=int, default=128,
                        help="Monte-Carlo samples (randomly masked copies); more is less noisy; a multiple of "
                             "--batch-size (default: %(default)s)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16,
                        help="masked copies per forward pass, lowered to --mc-num when larger "
                             "(default: %(default)s)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0,
                        help="torch seed of the random masks (default: %(default)s)")  # fmt: skip
    add_sampler_arguments(parser, ["cfg_scale"])
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model, tokenizer = load_from_args(args)
    prompt = torch.tensor(encode_plain(tokenizer, args.prompt))  # typed text: a spelled special token stays text
    answer = torch.tensor(encode_plain(tokenizer, args.answer))
    ll = get_log_likelihood(model, prompt, answer, mc_num=args.mc_num, batch_size=args.batch_size,
                            cfg_scale=resolve_sampler_settings(args, model, ["cfg_scale"])["cfg_scale"])  # fmt: skip
    print(f"log p({args.answer!r} | {args.prompt!r}) >= {ll:.4f} nats ({answer.numel()} answer tokens)")


if __name__ == "__main__":
    run_command(main)
