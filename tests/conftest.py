"""Shared fixtures: small random-initialised Genjo models built in-process (no downloads)."""

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from genjo import GenjoConfig, GenjoModelLM  # noqa: E402

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


@pytest.fixture(scope="session")
def model() -> GenjoModelLM:
    """A 2-layer random model (fp32, CPU) with large weights, so greedy answers vary by position and prompt."""
    return tiny_model(0, init_fn="normal", init_std=0.5)
