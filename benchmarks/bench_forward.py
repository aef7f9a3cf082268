"""Latency and model FLOP utilisation of one forward pass: full canvas, and the cached block steps.

Builds the model from a config with random weights (timing does not depend on the weights, and the
8B weights need not be downloaded), then times, for one canvas of --length tokens (prompt +
gen_length, the sampler's shapes):

- full forward: every token (the default sampler's step, and the likelihood's);
- refresh: the same with use_cache=True (first step of a block with a cache);
- prefix-cache step: the block and the suffix after it, against the cached prefix, for the block in
  the middle of the answer;
- dual-cache step: the block_length tokens of the first answer block, against the whole cache.

FLOPs count the matmuls (2 per multiply-add: projections, MLP, attention scores and values, LM
head); MFU = FLOPs / time / the accelerator's dense peak (bf16 peaks of known GPUs are built in;
pass --peak-tflops otherwise). Times are medians over --repeats, synchronised on CUDA.

    python benchmarks/bench_forward.py --model 8b                # published 8B architecture, CUDA bf16
    python benchmarks/bench_forward.py                           # the embedded model's config, CPU
    python benchmarks/bench_forward.py --model 8b --dry-run      # no GPU: shapes, FLOPs, memory model
    python benchmarks/bench_forward.py --model moe-7b-a1b --dry-run   # the published LLaDA-MoE-7B-A1B architecture

--dry-run builds the model on the meta device (no memory, no weights), runs every forward kind for
its output shapes, and prints the FLOPs and a memory model (bytes computed from the config, not
measured): weights, KV cache and logits per canvas row at gen_length 256/512/1024, with and without
CFG, for a full-canvas LM head and for the read block alone (what the sampler computes); then the long-context
table: at 8K, 32K and 128K tokens (--context-lengths), the diffusion-aware RoPE factor, the weights, the
activations of one forward, the KV cache of the prefix and dual caches, the logits, and the FLOPs.
"""

import argparse
import statistics
import time

import torch

from genjo import GenjoConfig, GenjoModelLM
from genjo.cli import run_command
from genjo.configuration_genjo_moe import GenjoMoeConfig
from genjo.loading import DEFAULT_MODEL, default_device, default_dtype, load_config, model_class
from genjo.long_context import rope_scaling_factor

# --model names of published architectures (their configs' defaults), besides checkpoint folders and hub ids.
ARCHITECTURES = {"8b": GenjoConfig, "moe-7b-a1b": GenjoMoeConfig}
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0}  # dense, no sparsity


def mlp_weights_per_token(config) -> list[int]:
    """Per block, the MLP weights one token multiplies by: the dense SwiGLU, or for a mixture of experts the
    router, its k experts and the shared expert."""
    d = config.d_model
    if not isinstance(config, GenjoMoeConfig):
        return [3 * d * config.mlp_hidden_size] * config.n_layers
    moe = d * config.num_experts + config.num_experts_per_tok * 3 * d * config.expert_intermediate_size
    moe += 3 * d * (config.shared_expert_intermediate_size or 0)
    return [moe if kind else 3 * d * config.dense_intermediate_size for kind in config.moe_layer_freq]


def forward_flops(config, query_tokens: int, key_tokens: int, head_tokens: int) -> int:
    """Matmul FLOPs of one sequence's forward (for a mixture of experts, those of the experts a token is routed to).

    query_tokens: tokens run through the blocks (projections and MLP); key_tokens: keys each of them
    attends to (cached ones included); head_tokens: positions whose logits are computed.
    """
    d = config.d_model
    kv_dim = config.n_kv_heads * (d // config.n_heads)
    attention_weights = 2 * d * d + 2 * d * kv_dim  # q, out; k, v
    attention_per_pair = 2 * d  # q . k over all heads, then the weighted sum of v: d multiply-adds each
    total = 2 * d * config.embedding_size * head_tokens
    for mlp in mlp_weights_per_token(config):
        total += 2 * (attention_weights + mlp) * query_tokens + 2 * attention_per_pair * query_tokens * key_tokens
    return total


def active_parameters(config, parameters: int) -> int:
    """Parameters a token multiplies by: all but the input embedding (a lookup reads one row of it), and for a
    mixture of experts only the experts it is routed to (the convention of LLaDA-MoE's "1.4B active")."""
    embedding = config.embedding_size * config.d_model
    if not isinstance(config, GenjoMoeConfig):
        return parameters - embedding
    idle = (config.num_experts - config.num_experts_per_tok) * 3 * config.d_model * config.expert_intermediate_size
    return parameters - embedding - idle * sum(config.moe_layer_freq)


def random_model(config, device: torch.device, dtype: torch.dtype) -> GenjoModelLM:
    """GenjoModelLM (GenjoMoeModelLM for a MoE config) with N(0, 0.02) weights and unit norm weights, allocated
    directly on the device."""
    with torch.device("meta"):
        model = model_class(config)(config)
    model = model.to(dtype).to_empty(device=device).eval()
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("ln_f.weight") or "layernorm" in name:
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
    return model


def median_seconds(run, repeats: int, device: torch.device) -> float:
    """Median wall time of run() over repeats, after two warm-up calls."""
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def peak_tflops(device: torch.device, dtype: torch.dtype, given) -> float | None:
    if given is not None:
        return given
    if device.type != "cuda" or dtype != torch.bfloat16:
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


@torch.inference_mode()
def forward_kinds(model, length: int, gen_length: int, block_length: int, batch_size: int) -> dict:
    """The sampler's forwards on one random canvas: name -> (query tokens, key tokens, callable)."""
    config, device = model.config, model.device
    prompt_length = length - gen_length
    ids = torch.randint(0, config.vocab_size, (batch_size, length), device=device)  # token values do not matter
    ids[:, prompt_length:] = config.mask_token_id
    cache = model(ids, use_cache=True).past_key_values  # (B, Hkv, L, Dh) per layer
    block_columns = slice(prompt_length, prompt_length + block_length)  # the first answer block (dual step)
    block = torch.zeros(batch_size, length, dtype=torch.bool, device=device)
    block[:, block_columns] = True
    prefix_length = prompt_length + (gen_length // block_length // 2) * block_length  # the middle block
    prefix = [(k[:, :, :prefix_length], v[:, :, :prefix_length]) for k, v in cache]
    return {
        "full forward": (length, length, lambda: model(ids)),
        "refresh (full + cache)": (length, length, lambda: model(ids, use_cache=True)),
        "prefix-cache step": (
            length - prefix_length,
            length,
            lambda: model(ids[:, prefix_length:], past_key_values=prefix),
        ),
        "dual-cache step": (
            block_length,
            length,
            lambda: model(ids[:, block_columns], past_key_values=cache, replace_position=block),
        ),
    }


def dry_run(config, dtype: torch.dtype, args) -> None:
    """Shapes, FLOPs and the memory model of the sampler's forwards, on the meta device."""
    with torch.device("meta"):
        model = model_class(config)(config).to(dtype).eval()
    parameters = sum(p.numel() for p in model.parameters())
    item = torch.tensor([], dtype=dtype).element_size()
    active = active_parameters(config, parameters)
    experts = ""
    if isinstance(config, GenjoMoeConfig):
        experts = f"mixture of experts: {config.num_experts} experts per block, {config.num_experts_per_tok} a token; "
    print(f"{experts}{active:,} active parameters per token (the input embedding and idle experts not counted)")
    print(f"dry run on the meta device: {parameters:,} parameters, {dtype}, batch {args.batch_size}, canvas "
          f"{args.length} = prompt {args.length - args.gen_length} + gen {args.gen_length}, "
          f"block {args.block_length}\n")  # fmt: skip
    print("| forward | input ids | logits | cache per layer (K and V) | GFLOP |")
    print("|---|---|---|---|---|")
    kinds = forward_kinds(model, args.length, args.gen_length, args.block_length, args.batch_size)
    head_dim = config.d_model // config.n_heads
    for name, (queries, keys, run) in kinds.items():
        try:
            with torch.inference_mode():
                out = run()
            logits_shape = tuple(out.logits.shape)
            cache_shape = tuple(out.past_key_values[0][0].shape) if out.past_key_values else "-"
        except NotImplementedError:  # the dual step's boolean-indexed cache update is data-dependent
            logits_shape = (args.batch_size, queries, config.embedding_size)
            cache_shape = f"{(args.batch_size, config.n_kv_heads, keys, head_dim)}, updated in place (not run on meta)"
        flops = args.batch_size * forward_flops(config, queries, keys, head_tokens=queries)
        print(f"| {name} | {(args.batch_size, queries)} | {logits_shape} | {cache_shape} | {flops / 1e9:.1f} |")

    gib = 2.0**30
    kv_per_token = 2 * config.n_layers * config.n_kv_heads * (config.d_model // config.n_heads) * item
    V, prompt = config.embedding_size, args.length - args.gen_length
    print(f"\nmemory model ({dtype}, bytes from the config, not measured): weights {parameters * item / gib:.2f} GiB; "
          f"KV cache {kv_per_token / 2**20:.3f} MiB per token per row\n")  # fmt: skip
    print(
        "| gen_length | canvas | KV cache per row | full-canvas logits per row | with CFG (2 rows) | "
        f"block logits per row (block {args.block_length}) | with CFG (2 rows + fp32 mix) |"
    )
    print("|---|---|---|---|---|---|---|")
    for gen in (256, 512, 1024):
        T = prompt + gen
        full = T * V * item
        block = args.block_length * V * item
        print(
            f"| {gen} | {T} | {T * kv_per_token / gib:.2f} GiB | {full / gib:.2f} GiB | {2 * full / gib:.2f} GiB | "
            f"{block / 2**20:.0f} MiB | {(2 * block + args.block_length * V * 4) / 2**20:.0f} MiB |"
        )
    if isinstance(config, GenjoConfig) and getattr(args, "context_lengths", None):  # the dense model's layout
        long_context_table(config, item, parameters, args)


def forward_activation_bytes(config: GenjoConfig, tokens: int, item: int) -> int:
    """Peak bytes of one inference forward's activations for one sequence (a model, not a measurement).

    Blocks run one after the other, so the peak is one block's: the residual stream in and out (2 T D), the
    normed input (T D) and then either the attention stage (q, k, v: T (D + 2 kv_dim); the fp32 RoPE copies of
    q and k and rotate_half's temporaries: 3 T (D + kv_dim) fp32; cos and sin gathered per position: 2 T Dh
    fp32; the attention output T D; fused kernels keep no T x T scores) or the MLP stage (gate, up and their
    product: 3 T hidden), whichever is larger. Logits and the KV cache are counted apart.
    """
    d, hidden, head_dim = config.d_model, config.mlp_hidden_size, config.d_model // config.n_heads
    kv_dim = config.n_kv_heads * head_dim
    residual = 3 * tokens * d * item
    attention = tokens * (2 * d + 2 * kv_dim) * item + 4 * (3 * tokens * (d + kv_dim) + 2 * tokens * head_dim)
    mlp = 3 * tokens * hidden * item
    return residual + max(attention, mlp)


def long_context_table(config: GenjoConfig, item: int, parameters: int, args) -> None:
    """Memory and FLOPs of the sampler's pieces at long contexts (one canvas row, bytes from the config)."""
    gib, head_dim = 2.0**30, config.d_model // config.n_heads
    kv_per_token = 2 * config.n_layers * config.n_kv_heads * head_dim * item
    train = config.max_sequence_length
    print(f"\nlong context (one canvas row of T tokens, gen_length {args.gen_length}, block {args.block_length}; "
          f"bytes from the config, not measured; trained length {train}, base {config.rope_theta:g})\n")  # fmt: skip
    print("| T | RoPE factor (diffusion-aware / NTK) | weights GiB | activations of one forward GiB | "
          "KV cache prefix (T - gen) GiB | KV cache dual (T) GiB | logits full canvas GiB | logits block MiB | "
          "TFLOP full forward | attention share of FLOPs |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for tokens in (int(n) for n in args.context_lengths.split(",")):
        aware = rope_scaling_factor(train, tokens, config.rope_theta, head_dim, diffusion_aware=True)
        plain = rope_scaling_factor(train, tokens, config.rope_theta, head_dim)
        flops = forward_flops(config, tokens, tokens, head_tokens=tokens)
        attention = config.n_layers * 2 * 2 * config.d_model * tokens * tokens
        print(f"| {tokens} | {aware:g} / {plain:g} | {parameters * item / gib:.2f} | "
              f"{forward_activation_bytes(config, tokens, item) / gib:.2f} | "
              f"{(tokens - args.gen_length) * kv_per_token / gib:.2f} | {tokens * kv_per_token / gib:.2f} | "
              f"{tokens * config.embedding_size * item / gib:.2f} | "
              f"{args.block_length * config.embedding_size * item / 2**20:.0f} | {flops / 1e12:.1f} | "
              f"{100 * attention / flops:.0f}% |")  # fmt: skip


def measure(model, length: int, gen_length: int, block_length: int, batch_size: int, repeats: int) -> list[dict]:
    """One row per forward kind: query/key tokens, FLOPs (whole batch) and median seconds."""
    rows = []
    for name, (queries, keys, run) in forward_kinds(model, length, gen_length, block_length, batch_size).items():
        with torch.inference_mode():
            seconds = median_seconds(run, repeats, model.device)
        flops = batch_size * forward_flops(model.config, queries, keys, head_tokens=queries)
        rows.append(dict(name=name, queries=queries, keys=keys, flops=flops, seconds=seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_help = ("checkpoint folder or hub id whose config is used (weights are random); '8b' = the published 8B "
                  "architecture, 'moe-7b-a1b' = the published LLaDA-MoE-7B-A1B")  # fmt: skip
    parser.add_argument("--model", default=DEFAULT_MODEL, help=model_help + " (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="weights dtype (default: bfloat16 on CUDA, float32 on CPU)")  # fmt: skip
    parser.add_argument("--length", type=int, default=1280,
                        help="canvas tokens: prompt + gen_length (default: %(default)s)")  # fmt: skip
    parser.add_argument("--gen-length", type=int, default=1024,
                        help="answer tokens of the canvas, a multiple of --block-length "
                             "(default: %(default)s)")  # fmt: skip
    parser.add_argument("--block-length", type=int, default=32,
                        help="tokens of a semi-autoregressive block (default: %(default)s)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=1, help="canvases per forward (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed forwards per kind; the median is reported (default: %(default)s)")  # fmt: skip
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense peak TFLOP/s for MFU (default: the bf16 peak of known GPUs, "
                             "else no MFU)")  # fmt: skip
    parser.add_argument("--context-lengths", default="8192,32768,131072",
                        help="--dry-run: comma-separated canvas lengths of the long-context table "
                             "(default: %(default)s)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true",
                        help="meta device: shapes, FLOPs and memory model, no timing (default: off)")  # fmt: skip
    args = parser.parse_args()
    if not 0 < args.gen_length <= args.length or args.gen_length % args.block_length:
        raise ValueError(f"need 0 < gen_length ({args.gen_length}) <= length ({args.length}) and gen_length "
                         f"divisible by block_length ({args.block_length}).")  # fmt: skip

    device = torch.device(args.device) if args.device else default_device()
    dtype = getattr(torch, args.dtype) if args.dtype else default_dtype(device)
    known = ARCHITECTURES.get(args.model.lower())
    config = known() if known else load_config(args.model)
    if args.dry_run:
        dry_run(config, getattr(torch, args.dtype) if args.dtype else torch.bfloat16, args)
        return
    torch.manual_seed(0)
    model = random_model(config, device, dtype)
    peak = peak_tflops(device, dtype, args.peak_tflops)
    rows = measure(model, args.length, args.gen_length, args.block_length, args.batch_size, args.repeats)

    parameters = sum(p.numel() for p in model.parameters())
    size = f"{parameters / 1e9:.2f} B" if parameters >= 1e9 else f"{parameters / 1e6:.2f} M"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"config {args.model} ({size} parameters, random weights), {dtype}, {where}, "
          f"torch {torch.__version__}, batch {args.batch_size}, canvas {args.length} = prompt "
          f"{args.length - args.gen_length} + gen {args.gen_length}, block {args.block_length}, "
          f"median of {args.repeats}; peak {peak if peak else 'unknown'} TFLOP/s\n")  # fmt: skip
    print("| forward | query tokens | key tokens | GFLOP | ms | TFLOP/s | MFU % | time / full forward |")
    print("|---|---|---|---|---|---|---|---|")
    full = rows[0]["seconds"]
    for r in rows:
        tflops = r["flops"] / r["seconds"] / 1e12
        mfu = f"{100 * tflops / peak:.1f}" if peak else "-"
        print(f"| {r['name']} | {r['queries']} | {r['keys']} | {r['flops'] / 1e9:.1f} | {1e3 * r['seconds']:.2f} | "
              f"{tflops:.2f} | {mfu} | {r['seconds'] / full:.3f} |")  # fmt: skip


if __name__ == "__main__":
    run_command(main)
