"""The CPU thread policy of genjo.loading: one thread for a small model on the CPU, unless the user chose.

Nothing here is timed: benchmarks/bench_threads.py measures the effect.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from genjo.loading import (
    SMALL_MODEL_PARAMETERS,
    THREAD_VARIABLES,
    add_model_arguments,
    cpu_threads,
    load_from_args,
    load_model,
)

ROOT = Path(__file__).resolve().parent.parent
SMALL = 2_000_000  # the embedded models' size
NO_ENV: dict = {}


@pytest.fixture
def restore_threads(monkeypatch):
    """Leave torch's thread count as it was, with neither thread variable set unless a test sets it."""
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_small_model_on_the_cpu_gets_one_thread():
    assert cpu_threads(None, on_cpu=True, parameters=SMALL, environ=NO_ENV) == 1


@pytest.mark.parametrize("name", THREAD_VARIABLES)
def test_a_thread_variable_leaves_torch_alone(name):
    assert cpu_threads(None, on_cpu=True, parameters=SMALL, environ={name: "2"}) is None


def test_big_or_gpu_models_keep_torchs_default():
    assert cpu_threads(None, on_cpu=True, parameters=SMALL_MODEL_PARAMETERS, environ=NO_ENV) is None
    assert cpu_threads(None, on_cpu=False, parameters=SMALL, environ=NO_ENV) is None


def test_the_flag_wins_over_everything():
    for on_cpu, parameters, environ in [(True, SMALL, NO_ENV), (False, 8 * 10**9, {"OMP_NUM_THREADS": "4"})]:
        assert cpu_threads(3, on_cpu=on_cpu, parameters=parameters, environ=environ) == 3
        assert cpu_threads(0, on_cpu=on_cpu, parameters=parameters, environ=environ) is None  # torch's own
    with pytest.raises(ValueError, match="threads"):
        cpu_threads(-1, on_cpu=True, parameters=SMALL, environ=NO_ENV)


def test_load_model_applies_the_policy(restore_threads, monkeypatch, tmp_path):
    tiny_model(0).save_pretrained(tmp_path)
    torch.set_num_threads(2)
    load_model(str(tmp_path), device="cpu", with_tokenizer=False)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    load_model(str(tmp_path), device="cpu", with_tokenizer=False)
    assert torch.get_num_threads() == 2


def test_every_script_gets_threads(restore_threads, tmp_path):
    tiny_model(0).save_pretrained(tmp_path)
    parser = add_model_arguments(argparse.ArgumentParser())
    assert parser.parse_args([]).threads is None
    load_from_args(parser.parse_args(["--model", str(tmp_path), "--device", "cpu", "--threads", "3"]), False)
    assert torch.get_num_threads() == 3
    load_from_args(parser.parse_args(["--model", str(tmp_path), "--device", "cpu", "--threads", "0"]), False)
    assert torch.get_num_threads() == 3  # 0: left as it was


def test_importing_genjo_leaves_threads_alone():
    script = (
        "import torch; n = torch.get_num_threads(); import genjo, generate, chat; print(n, torch.get_num_threads())"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = result.stdout.split()[-2:]
    assert before == after


def test_a_small_checkpoint_loads_without_the_weights_progress_bar(capfd):
    """A 2 MB model printed "Loading weights 57/57" in every script; the bar stays for large checkpoints."""
    from transformers.utils import logging as hf_logging

    from genjo.loading import DEFAULT_MODEL, load_model, weights_progress_bar

    load_model(DEFAULT_MODEL, device="cpu", with_tokenizer=False)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # restored afterwards
    with weights_progress_bar("some-org/some-hub-id"):  # not a local folder: the bar stays on
        assert hf_logging.is_progress_bar_enabled()
