"""Extra peak memory of the sampler per canvas logit, for each sampler setting, side by side.

Each setting runs in a fresh process on the CPU: a random-weight model whose vocabulary dominates
the memory (d_model 64, 2 layers, --vocab logits per position) is built, the peak-RSS mark is
reset (/proc/self/clear_refs), generate() runs, and the script reports the peak resident memory
above the level before the call, divided by the canvas logits B x (prompt + gen_length) x V. The
model, its weights and the canvas are the same for every setting, so the differences between rows
are the sampler's own buffers (logits, noise, confidences).

    python benchmarks/bench_memory.py                                  # the installed genjo's sampler
    python benchmarks/bench_memory.py --sampler /path/to/old/generate.py --label before
    python benchmarks/bench_memory.py --likelihood [--sampler /path/to/old/get_log_likelihood.py]

--context-lengths 1024,2048,4096,8192 measures instead how the sampler's extra peak grows with the context:
one batch row, the prompt grown to each length (gen_length and block fixed), a model whose vocabulary is
small (--vocab 512 is a good choice) so that the memory is the canvas's activations, keys and values; per
setting (full canvas, prefix cache, dual cache) the extra peak per context token. Attention through fused
kernels keeps it flat (linear growth); a materialised T x T score matrix would make it grow with T.

--likelihood measures get_log_likelihood instead (one forward of --batch rows scoring a
--gen-length-token answer after the prompt), per setting of rows and CFG: the extra peak divided by
the logits of the masked slots it scores (N x V, N about half the answer per row).

Linux only (reads /proc/self/status). One thread per process, so the numbers do not depend on the
machine's load.
"""

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

SETTINGS = {  # name -> generate() keyword arguments
    "T=0, low_confidence": dict(temperature=0.0, remasking="low_confidence"),
    "T=0.8, low_confidence": dict(temperature=0.8, remasking="low_confidence"),
    "T=0, random": dict(temperature=0.0, remasking="random"),
    "T=0.8, random": dict(temperature=0.8, remasking="random"),
    "T=0, CFG 1.0": dict(temperature=0.0, cfg_scale=1.0),
    "T=0.8, CFG 1.0": dict(temperature=0.8, cfg_scale=1.0),
    "T=0, dual cache": dict(temperature=0.0, cache="dual"),
    "T=0.8, dual cache": dict(temperature=0.8, cache="dual"),
}
BASELINE = {name: name.replace("T=0.8", "T=0") for name in SETTINGS if name.startswith("T=0.8")}
CONTEXT_SETTINGS = {  # name -> generate() keyword arguments, for --context-lengths
    "full canvas": dict(temperature=0.0),
    "prefix cache": dict(temperature=0.0, cache="prefix"),
    "dual cache": dict(temperature=0.0, cache="dual"),
}
LIKELIHOOD_SETTINGS = {  # name -> (rows per forward, cfg_scale)
    "8 rows": (8, 0.0),
    "32 rows": (32, 0.0),
    "8 rows, CFG 1.0": (8, 1.0),
    "32 rows, CFG 1.0": (32, 1.0),
}


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measured_module(args):
    """The module whose generate() (or get_log_likelihood() with --likelihood) is measured: the installed
    genjo's, or the file given by --sampler (e.g. an older generate.py)."""
    if args.sampler is None:
        return importlib.import_module("genjo.likelihood" if args.likelihood else "genjo.sampling")
    spec = importlib.util.spec_from_file_location("sampler_under_test", args.sampler)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child(args) -> None:
    """Runs in the subprocess: one setting, prints a JSON line."""
    import torch

    from genjo import GenjoConfig, GenjoModelLM

    sampler = measured_module(args)

    torch.manual_seed(0)
    mask_id = args.vocab - 1
    config = GenjoConfig(d_model=64, n_layers=2, n_heads=4, mlp_hidden_size=128, vocab_size=args.vocab,
                         embedding_size=args.vocab, max_sequence_length=max(4096, args.prompt_length + args.gen_length),
                         mask_token_id=args.vocab - 1,
                         eos_token_id=1, pad_token_id=1, eot_token_id=2, bos_token_id=0)  # fmt: skip
    model = GenjoModelLM(config).to(getattr(torch, args.dtype)).eval()
    prompt = torch.randint(3, args.vocab - 1, (args.batch, args.prompt_length))
    if args.likelihood:
        rows, cfg = LIKELIHOOD_SETTINGS[args.setting]
        answer = torch.randint(3, mask_id, (args.gen_length,))
        score = sampler.get_log_likelihood
        score(model, prompt[0, :8], answer[:8], mc_num=2, batch_size=2, cfg_scale=cfg)  # warm-up
        Path("/proc/self/clear_refs").write_text("5")
        before = _kib("VmRSS")
        generator = torch.Generator().manual_seed(0)
        score(model, prompt[0], answer, mc_num=rows, batch_size=rows, cfg_scale=cfg, generator=generator)
        peak = _kib("VmHWM")
        logits = rows * (args.gen_length // 2) * args.vocab  # masked slots: about half the answer per row
        print(json.dumps(dict(setting=args.setting, extra_bytes=peak - before, per_logit=(peak - before) / logits)))
        return
    setting = {**SETTINGS, **CONTEXT_SETTINGS}[args.setting]
    kwargs = dict(setting, steps=args.gen_length // args.block_length, gen_length=args.gen_length,
                  block_length=args.block_length)  # fmt: skip
    sampler.generate(model, prompt[:, :8], **dict(kwargs, gen_length=args.block_length, steps=1))  # warm-up
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _kib("VmRSS")
    sampler.generate(model, prompt, **kwargs)
    peak = _kib("VmHWM")
    logits = args.batch * (args.prompt_length + args.gen_length) * args.vocab
    print(json.dumps(dict(setting=args.setting, extra_bytes=peak - before, per_logit=(peak - before) / logits)))


def run_child(args, setting: str, **overrides) -> dict:
    """One setting measured in a fresh process (the arguments of this one, with overrides): its JSON line."""
    values = dict(vars(args), **overrides)
    command = [sys.executable, __file__, "--setting", setting] + [
        f"--{k.replace('_', '-')}={v}"
        for k, v in values.items()
        if k not in ("setting", "label", "likelihood", "context_lengths") and v is not None
    ]
    command += ["--likelihood"] if args.likelihood else []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"{setting} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def context_table(args) -> None:
    """The sampler's extra peak as the prompt grows: one row per (setting, context length)."""
    from tqdm import tqdm

    lengths = [int(n) for n in args.context_lengths.split(",")]
    if args.likelihood or min(lengths) < 1:
        raise SystemExit("--context-lengths takes positive prompt lengths and measures generate() only.")
    jobs = [(setting, n) for setting in CONTEXT_SETTINGS for n in lengths]
    rows = [run_child(args, setting, prompt_length=n, batch=1) for setting, n in tqdm(jobs, desc="context")]
    print(f"\n{args.label}: sampler extra peak vs context, B 1, gen {args.gen_length}, block {args.block_length}, "
          f"V {args.vocab}, {args.dtype}, d_model 64, 2 layers, 4 heads\n")  # fmt: skip
    print("| setting | context (prompt + gen) | extra peak MiB | KiB per context token | "
          "marginal KiB per added token | a T x T fp32 score matrix per head would be MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    previous = {}
    for (setting, n), r in zip(jobs, rows):
        tokens = n + args.gen_length
        marginal = "-"
        if setting in previous:
            before_tokens, before_bytes = previous[setting]
            marginal = f"{(r['extra_bytes'] - before_bytes) / (tokens - before_tokens) / 1024:.2f}"
        previous[setting] = (tokens, r["extra_bytes"])
        print(f"| {setting} | {tokens} | {r['extra_bytes'] / 2**20:.1f} | {r['extra_bytes'] / tokens / 1024:.2f} | "
              f"{marginal} | {tokens * tokens * 4 / 2**20:.0f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sampler",
        default=None,
        help="a generate.py (get_log_likelihood.py with --likelihood) to measure instead, e.g. an older copy "
        "(default: the installed genjo's sampler or likelihood)",
    )
    parser.add_argument("--label", default="this checkout", help="row label in the table (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=2, help="prompts per batch (default: %(default)s)")
    parser.add_argument("--prompt-length", type=int, default=200, help="prompt tokens (default: %(default)s)")
    parser.add_argument("--gen-length", type=int, default=256, help="answer tokens (default: %(default)s)")
    parser.add_argument("--block-length", type=int, default=32, help="block tokens (default: %(default)s)")
    parser.add_argument(
        "--vocab", type=int, default=32000, help="vocabulary of the random model (default: %(default)s)"
    )
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="model dtype (default: %(default)s)"
    )
    parser.add_argument(
        "--likelihood", action="store_true", help="measure get_log_likelihood instead of the sampler (default: off)"
    )
    parser.add_argument(
        "--context-lengths",
        default=None,
        help="comma-separated prompt lengths: measure the growth of the extra peak with the context, one batch row "
        "(default: off)",
    )
    parser.add_argument("--setting", default=None, help=argparse.SUPPRESS)  # set in the child process
    args = parser.parse_args()
    if args.setting is not None:
        child(args)
        return
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("bench_memory.py needs Linux (/proc/self/clear_refs and VmHWM).")

    from tqdm import tqdm

    if args.context_lengths:
        context_table(args)
        return
    rows = []
    settings = LIKELIHOOD_SETTINGS if args.likelihood else SETTINGS
    for setting in tqdm(settings, desc=args.label):
        rows.append(run_child(args, setting))
    canvas = args.prompt_length + args.gen_length
    if args.likelihood:
        print(f"\n{args.label}: get_log_likelihood, prompt {args.prompt_length} + answer {args.gen_length}, "
              f"V {args.vocab}, {args.dtype}, one forward of the given rows\n")  # fmt: skip
        print("| setting | extra peak MiB | bytes per masked-slot logit |")
        print("|---|---|---|")
        for r in rows:
            print(f"| {r['setting']} | {r['extra_bytes'] / 2**20:.0f} | {r['per_logit']:.1f} |")
        return
    print(f"\n{args.label}: B {args.batch}, canvas {canvas} = prompt {args.prompt_length} + gen {args.gen_length}, "
          f"block {args.block_length}, V {args.vocab}: {args.batch * canvas * args.vocab:,} "
          "canvas logits\n")  # fmt: skip
    print("| setting | extra peak MiB | bytes per canvas logit | over T=0 (same remasking/CFG) |")
    print("|---|---|---|---|")
    by_name = {r["setting"]: r for r in rows}
    for r in rows:
        base = BASELINE.get(r["setting"])
        over = f"{r['per_logit'] - by_name[base]['per_logit']:+.1f}" if base else "-"
        print(f"| {r['setting']} | {r['extra_bytes'] / 2**20:.0f} | {r['per_logit']:.1f} | {over} |")


if __name__ == "__main__":
    from genjo.cli import run_command  # here: importing genjo loads transformers

    run_command(main)
