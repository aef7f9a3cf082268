"""The benchmark scripts' own arithmetic: FLOP counts behind the reported model FLOP utilisation."""

import pytest
import torch
from conftest import load_benchmark, tiny_config
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

bench_forward = load_benchmark("bench_forward")


@pytest.mark.parametrize("n_kv_heads", [4, 2])  # multi-head and grouped-query attention
def test_forward_flops_equal_torch_flop_counter_for_every_forward_kind(n_kv_heads):
    """The analytic count used for MFU equals torch's count of the matmuls actually run, per kind."""
    model = bench_forward.random_model(tiny_config(n_kv_heads=n_kv_heads), torch.device("cpu"), torch.float32)
    kinds = bench_forward.forward_kinds(model, length=80, gen_length=64, block_length=16, batch_size=2)
    assert [(q, k) for q, k, _ in kinds.values()] == [(80, 80), (80, 80), (32, 80), (16, 80)]
    for name, (queries, keys, run) in kinds.items():
        # the math backend runs attention as matmuls, which the counter sees (fused kernels it does not)
        with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            run()
        expected = 2 * bench_forward.forward_flops(model.config, queries, keys, head_tokens=queries)
        assert counter.get_total_flops() == expected, name


def test_random_model_is_finite_and_unit_normed():
    model = bench_forward.random_model(tiny_config(), torch.device("cpu"), torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert torch.equal(model.model.transformer.ln_f.weight, torch.ones_like(model.model.transformer.ln_f.weight))
    logits = model(torch.randint(0, 60, (1, 12))).logits
    assert logits.shape == (1, 12, 64) and bool(torch.isfinite(logits).all())
