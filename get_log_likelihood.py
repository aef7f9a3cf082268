"""Estimate log p(answer | prompt) with a masked diffusion model: a Monte-Carlo lower bound (ELBO, in nats).

    python get_log_likelihood.py                       # three answers to a sorting prompt, best first
    python get_log_likelihood.py --prompt "Sort 3 1 2 and you get" --answer " 1 2 3." --answer " 3 2 1."

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

DEMO_PROMPT = "Sort 7 3 9 1 4 and you get"  # a sentence form the embedded base model was pre-trained on
DEMO_ANSWERS = [" 1 3 4 7 9.", " 1 3 4 9 7.", " 9 7 4 3 1."]  # right, almost right, reversed


def main(argv=None) -> None:
    """Print the estimate of log p(answer | prompt) for one prompt and one or more answers, best first.

    Each number is a Monte-Carlo lower bound (ELBO) of the log-probability of the answer given the prompt, in
    nats (natural log): higher is more likely. Compare answers of the same prompt: the model's choice is the
    highest. Each text is tokenized without BOS; mind an answer's leading space.
    """
    parser = add_model_arguments(argparse.ArgumentParser(description=main.__doc__.splitlines()[0]),
                                 default=DEFAULT_BASE_MODEL)  # fmt: skip
    parser.add_argument("--prompt", default=DEMO_PROMPT,
                        help="the conditioning text, tokenized without BOS (default: %(default)r)")  # fmt: skip
    parser.add_argument("--answer", action="append",
                        help="a text whose log-likelihood is estimated (repeatable, to compare answers); mind its "
                             f"leading space (default: {DEMO_ANSWERS})")  # fmt: skip
    parser.add_argument("--mc-num", type=int, default=128,
                        help="Monte-Carlo samples (randomly masked copies); more is less noisy; a multiple of "
                             "--batch-size (default: %(default)s)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16,
                        help="masked copies per forward pass, lowered to --mc-num when larger "
                             "(default: %(default)s)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0,
                        help="torch seed of the random masks (default: %(default)s)")  # fmt: skip
    add_sampler_arguments(parser, ["cfg_scale"])
    args = parser.parse_args(argv)
    answers = args.answer or DEMO_ANSWERS

    torch.manual_seed(args.seed)
    model, tokenizer = load_from_args(args)
    prompt = torch.tensor(encode_plain(tokenizer, args.prompt))  # typed text: a spelled special token stays text
    pairs = [(prompt, torch.tensor(encode_plain(tokenizer, answer))) for answer in answers]
    cfg_scale = resolve_sampler_settings(args, model, ["cfg_scale"])["cfg_scale"]
    lls = get_log_likelihoods(model, pairs, mc_num=args.mc_num, batch_size=args.batch_size, cfg_scale=cfg_scale)
    print(f"log p(answer | {args.prompt!r}) >= the ELBO below, in nats (higher = more likely; {args.mc_num} "
          "Monte-Carlo samples each):")  # fmt: skip
    width = max(len(repr(answer)) for answer in answers)
    for rank, (ll, answer, (_, ids)) in enumerate(sorted(zip(lls, answers, pairs), key=lambda r: -r[0]), start=1):
        print(f"{rank}. {answer!r:<{width}}  {ll:9.4f}  ({ids.numel()} tokens)")


if __name__ == "__main__":
    run_command(main)
