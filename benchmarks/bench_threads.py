"""CPU threads and the embedded model: one thread (Genjo's default for a small model) against PyTorch's default
(one thread per core), side by side, with the tokens compared.

    python benchmarks/bench_threads.py                      # 3 alternating runs of each setting
    python benchmarks/bench_threads.py --repeats 5 --loop-calls 20

Every run is a fresh process with OMP_NUM_THREADS and MKL_NUM_THREADS unset, the two settings alternating so
that a change in the machine's load hits both:
1. ``python generate.py`` (the three demo questions, embedded model) as a user types it: wall time and CPU time
   (user + system, all threads, of the child process) of the whole command, start-up included. One thread is
   the default; ``--threads 0`` keeps PyTorch's default.
2. A generation loop in one process: ``load_model(threads=...)``, then ``--loop-calls`` calls of
   ``genjo.generate`` on the same three prompts with the checkpoint's sampler settings (start-up excluded).
The table gives medians (and the fastest run's wall time, the least disturbed by other load) and the ratio
PyTorch default / one thread of the medians; "same tokens" compares every run's output
(the answers' text for 1, the whole canvas for 2) with the first one-thread run.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from genjo.cli import run_command

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {"1 thread (default)": "1", "torch default": "0"}  # label -> --threads

LOOP = """
import hashlib, json, sys, time
import torch
from genjo import generate, load_model, resolve_sampler_settings
from genjo.chat_format import question_batch
from generate import DEMO_QUESTIONS

model, tokenizer = load_model(device="cpu", threads=int(sys.argv[1]))
prompt, mask = question_batch(tokenizer, DEMO_QUESTIONS)
settings = resolve_sampler_settings({}, model)
generate(model, prompt, mask, **settings)  # warm-up
wall, cpu = time.perf_counter(), time.process_time()
for _ in range(int(sys.argv[2])):
    out = generate(model, prompt, mask, **settings)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
digest = hashlib.sha256(out.numpy().tobytes()).hexdigest()[:16]
print(json.dumps(dict(wall=wall, cpu=cpu, threads=torch.get_num_threads(), tokens=digest)))
"""


def clean_environment() -> dict:
    """This process's environment without the thread variables (they would switch Genjo's default off)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO)  # this checkout's genjo, whatever is installed
    return env


def timed_run(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system of the child, all its threads) and stdout of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=clean_environment(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.stdout


def measure(repeats: int, loop_calls: int) -> dict:
    """{(measurement, setting): [(wall, cpu, output), ...]} over alternating runs."""
    runs: dict = {}
    for _ in range(repeats):
        for label, threads in SETTINGS.items():
            wall, cpu, out = timed_run([sys.executable, "generate.py", "--threads", threads])
            runs.setdefault(("python generate.py", label), []).append((wall, cpu, out))
            *_, line = timed_run([sys.executable, "-c", LOOP, threads, str(loop_calls)])[2].splitlines()
            record = json.loads(line)
            runs.setdefault((f"loop of {loop_calls} generate() calls", label), []).append(
                (record["wall"], record["cpu"], record["tokens"])
            )
    return runs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each setting (default: %(default)s)")
    parser.add_argument("--loop-calls", type=int, default=10,
                        help="generate() calls in the in-process loop (default: %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.loop_calls < 1:
        parser.error("--repeats and --loop-calls must be >= 1")
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__} (default {torch.get_num_threads()} threads), "
          f"{args.repeats} runs of each setting, medians\n")  # fmt: skip
    runs = measure(args.repeats, args.loop_calls)
    print(f"| {'measurement':<28} | {'threads':<18} | {'wall s':>7} | {'min wall':>8} | {'CPU s':>7} | "
          f"{'wall ratio':>10} | {'CPU ratio':>9} | same tokens |")  # fmt: skip
    print(f"|{'-' * 30}|{'-' * 20}|{'-' * 9}|{'-' * 10}|{'-' * 9}|{'-' * 12}|{'-' * 11}|{'-' * 13}|")
    for measurement in dict.fromkeys(name for name, _ in runs):
        one = runs[(measurement, "1 thread (default)")]
        base_wall, base_cpu = (statistics.median(r[i] for r in one) for i in (0, 1))
        for label in SETTINGS:
            rows = runs[(measurement, label)]
            wall, cpu = (statistics.median(r[i] for r in rows) for i in (0, 1))
            same = all(r[2] == one[0][2] for r in rows)
            fastest = min(r[0] for r in rows)
            print(f"| {measurement:<28} | {label:<18} | {wall:7.2f} | {fastest:8.2f} | {cpu:7.2f} | "
                  f"{wall / base_wall:9.2f}x | {cpu / base_cpu:8.2f}x | {'yes' if same else 'NO':<11} |")  # fmt: skip


if __name__ == "__main__":
    run_command(main)
