"""The command line of ``python -m genjo.train``: a stage (pretrain, sft, vrpo) or the tiny models' recipe."""

import sys

from ..loading import CHECKPOINTS
from . import recipe
from .args import STAGES, args_from_namespace, build_parser
from .loop import train


def main(argv=None) -> None:
    """Parse the command line (argv, default sys.argv) and run the stage, or the recipe; prints the final folder."""
    argv = sys.argv[1:] if argv is None else list(argv)
    stage = next((a for a in argv if not a.startswith("-")), "pretrain")  # the stage: its own flag defaults
    stage = stage if stage in STAGES else "pretrain"
    parser = build_parser(stage)
    ns = parser.parse_args(argv)
    if ns.stage == "recipe":
        if ns.replace_shipped and ns.export_root:
            parser.error("--replace-shipped and --export-root are exclusive.")
        export_root = str(CHECKPOINTS) if ns.replace_shipped else ns.export_root
        experts = None
        if ns.num_experts:  # the recipe for a mixture of experts of the tiny model's active size
            if ns.replace_shipped:
                parser.error("--replace-shipped overwrites the embedded dense models; export a MoE with --export-root.")
            experts = dict(num_experts=ns.num_experts, experts_per_token=ns.experts_per_token,
                           expert_hidden_size=ns.expert_hidden_size)  # fmt: skip
        recipe.reproduce_tiny_models(ns.run_dir, export_root, ns.seed, ns.scale, experts)
        return
    print(train(args_from_namespace(ns)))
