"""Shared fixtures: small random-initialised Genjo models built in-process (no downloads)."""

import importlib.util
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from genjo import GenjoConfig, GenjoModelLM  # noqa: E402
from genjo.loading import DEFAULT_MODEL  # noqa: E402
from genjo.tokenizer import build_tokenizer  # noqa: E402


def load_benchmark(name: str):
    """A script of benchmarks/ (a folder of scripts, not a package) loaded from its file as a module."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Vocabulary of the test models: ids 0..5 are the specials of the tiny tokenizer.
BOS, EOS, MASK, EOT = 0, 1, 2, 5


def tiny_config(**overrides) -> GenjoConfig:
    fields = dict(
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,  # grouped-query attention, so that path is exercised too
        mlp_hidden_size=64,
        vocab_size=60,
        embedding_size=64,
        max_sequence_length=96,
        rope_theta=10000.0,
        mask_token_id=MASK,
        eos_token_id=EOS,
        pad_token_id=EOS,
        bos_token_id=BOS,
        eot_token_id=EOT,
    )
    fields.update(overrides)
    return GenjoConfig(**fields)


def tiny_model(seed: int = 0, **overrides) -> GenjoModelLM:
    torch.manual_seed(seed)
    return GenjoModelLM(tiny_config(**overrides)).eval()


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module: tiny models run far faster so, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model() -> GenjoModelLM:
    """A 2-layer random model (fp32, CPU) with large weights, so greedy answers vary by position and prompt."""
    return tiny_model(0, init_fn="normal", init_std=0.5)


# ----------------------------------------------------------------------------- chat, app and visualisation helpers


def run_outside_the_repo(script: str, tmp_path) -> None:
    """Run a Python script in tmp_path with the repository off the path (only installed packages and
    remote code); it must print OK."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


CHROMIUM = "/usr/bin/chromium"  # Debian's chromium; playwright drives it (its own browser download is not used)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage"]  # fmt: skip


def require_chromium():
    """playwright.sync_api, once Chromium and playwright are known to be there; the test is skipped without
    them (a failure under CI)."""
    message = None
    if not os.path.exists(CHROMIUM):
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    else:
        try:
            from playwright import sync_api
        except ImportError:
            message = "playwright is not installed (pip install playwright; no `playwright install` needed)"
    if message:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return sync_api


def chat_model_path() -> str:
    """The instruct checkpoint of the end-to-end tests: the embedded one (GENJO_TEST_MODEL overrides)."""
    return os.environ.get("GENJO_TEST_MODEL") or DEFAULT_MODEL


def require_checkpoint(path: str) -> str:
    """The checkpoint folder; the test is skipped when it is missing (a failure under CI)."""
    if not os.path.isdir(path):
        message = (
            f"checkpoint {path} is missing (re-train it with `python -m genjo.train recipe --replace-shipped`, "
            "or set GENJO_TEST_MODEL)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def instruct_model_path() -> str:
    """Path of the instruct checkpoint of the end-to-end tests."""
    return require_checkpoint(chat_model_path())


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """The tiny model's tokenizer: loaded from the instruct checkpoint when present, else rebuilt (~8 s)."""
    path = chat_model_path()
    return AutoTokenizer.from_pretrained(path) if os.path.isdir(path) else build_tokenizer()


class ScriptedModel:
    """A stand-in mask predictor that always proposes the same answer (exact, weight-free tests).

    Answer slot i (the i-th of the last len(answer) columns) gets logit strength[i] on answer[i] and 0
    elsewhere, so low_confidence remasking reveals the slots in order of strength (default: left to right).
    Every input it sees is recorded in ``calls``.
    """

    def __init__(self, answer: list[int], vocab_size: int = 512, strength=None, max_sequence_length: int = 512):
        self.answer = answer
        self.strength = strength or [2.0 + 0.1 * i for i in range(len(answer))][::-1]
        self.vocab_size = vocab_size
        self.config = SimpleNamespace(mask_token_id=MASK, eos_token_id=EOS, eot_token_id=EOT,
                                      max_sequence_length=max_sequence_length)  # fmt: skip
        self.device = torch.device("cpu")
        self.calls: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, attention_mask=None):
        self.calls.append(input_ids.clone())
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.vocab_size)  # (B, T, V)
        for i, (token, strength) in enumerate(zip(self.answer, self.strength)):
            logits[:, T - len(self.answer) + i, token] = strength
        return SimpleNamespace(logits=logits)


def scripted_answer(tokenizer, text: str, gen_length: int) -> list[int]:
    """Ids of text + <|eot_id|>, padded with EOS to gen_length."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [EOT]
    return ids + [EOS] * (gen_length - len(ids))
