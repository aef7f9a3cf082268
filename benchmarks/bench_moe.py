"""CPU (or GPU) time of one mixture-of-experts MLP: Genjo's dispatch grouped by expert, a naive per-expert loop,
and the dense SwiGLU MLP of the same active size.

- grouped: ``SparseMoe.forward`` (genjo/modeling_genjo_moe.py): the (token, choice) pairs sorted by expert once,
  one matmul chain per expert on its contiguous rows, one index_add back;
- per-expert loop: the release's way (one-hot mask, then for every expert a ``torch.where`` over the mask, a
  gather, the expert, an index_add), on the same module and weights;
- dense: one SwiGLU MLP whose hidden size is k x the expert size (the same multiply-adds per token).

Token counts are the sampler's: a dual-cache block step (32), a prefix-cache step (256) and a full canvas (1280).

    python benchmarks/bench_moe.py                                     # 64 experts, 8 per token, d_model 512
    python benchmarks/bench_moe.py --experts 8 --top-k 2 --d-model 160 --expert-size 224   # the tiny MoE's shape
"""

import argparse

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

from genjo.cli import run_command
from genjo.configuration_genjo_moe import GenjoMoeConfig
from genjo.loading import default_device
from genjo.modeling_genjo_moe import ExpertMLP, SparseMoe


def per_expert_loop(moe: SparseMoe, x: torch.Tensor) -> torch.Tensor:
    """The release's dispatch: for each of the E experts, find its tokens in a one-hot mask and run it. x (N, D)."""
    _, weights, experts = moe.route(x)
    out = torch.zeros_like(x)
    mask = F.one_hot(experts, num_classes=moe.num_experts).permute(2, 1, 0)  # (E, k, N)
    for e in range(moe.num_experts):
        choice, token = torch.where(mask[e])
        out.index_add_(0, token, moe.experts[e](x[token]) * weights[token, choice, None])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=64, help="experts per block (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=8, help="experts per token (default: %(default)s)")
    parser.add_argument("--d-model", type=int, default=512, help="hidden size (default: %(default)s)")
    parser.add_argument("--expert-size", type=int, default=256, help="hidden size of an expert (default: %(default)s)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[32, 256, 1280],
                        help="tokens per forward (default: %(default)s)")  # fmt: skip
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"],
                        help="weights dtype (default: %(default)s)")  # fmt: skip
    parser.add_argument("--min-run-time", type=float, default=1.0,
                        help="seconds of timed calls per cell, in blocks; the median block is reported "
                             "(torch.utils.benchmark; default: %(default)s)")  # fmt: skip
    args = parser.parse_args()

    device = torch.device(args.device) if args.device else default_device()
    dtype = getattr(torch, args.dtype)
    config = GenjoMoeConfig(hidden_size=args.d_model, num_experts=args.experts, num_experts_per_tok=args.top_k,
                            expert_intermediate_size=args.expert_size)  # fmt: skip
    torch.manual_seed(0)
    moe = SparseMoe(config).to(device, dtype).eval()
    dense = ExpertMLP(args.d_model, args.top_k * args.expert_size).to(device, dtype).eval()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"MoE MLP: {args.experts} experts, {args.top_k} per token, d_model {args.d_model}, expert size "
          f"{args.expert_size}; dense MLP of hidden {args.top_k * args.expert_size}; {dtype}, {where}, torch "
          f"{torch.__version__}, median block of {args.min_run_time} s of calls (torch.utils.benchmark)\n")  # fmt: skip
    print("| tokens | grouped (ms) | per-expert loop (ms) | loop / grouped | dense, same active size (ms) | "
          "grouped / dense |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for n in args.tokens:
        x = torch.randn(n, args.d_model, device=device, dtype=dtype)
        with torch.inference_mode():
            torch.testing.assert_close(moe(x)[0], per_expert_loop(moe, x), rtol=1e-4, atol=1e-4)
            grouped, loop, plain = (
                1e3 * Timer("f(x)", globals={"f": f, "x": x}).blocked_autorange(min_run_time=args.min_run_time).median
                for f in (moe, lambda x: per_expert_loop(moe, x), dense)
            )
        print(f"| {n} | {grouped:.2f} | {loop:.2f} | {loop / grouped:.2f} | {plain:.2f} | {grouped / plain:.2f} |")


if __name__ == "__main__":
    run_command(main)
