"""The mask predictor: forward against the formulas, masks, positions, caches, config."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import EOS, tiny_config, tiny_model

from genjo import GenjoConfig, GenjoModelLM


def reference_forward(model: GenjoModelLM, ids: torch.Tensor, positions: torch.Tensor, key_mask=None) -> torch.Tensor:
    """Logits (B, T, V) recomputed in float64 with explicit loops and the raw weights: pre-norm blocks, RMSNorm
    then weight, rotate-half RoPE, bidirectional attention, SwiGLU MLP, final norm, LM head."""
    cfg = model.config
    w = {k: v.double() for k, v in model.state_dict().items()}
    p = "model.transformer."
    head_dim = cfg.d_model // cfg.n_heads
    group = cfg.n_heads // cfg.n_kv_heads

    def rms(x, weight):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.rms_norm_eps) * weight

    def rope(x, pos):  # x (T, Dh), pos (T,)
        half = head_dim // 2
        inv = torch.tensor([cfg.rope_theta ** (-2 * j / head_dim) for j in range(half)], dtype=torch.float64)
        ang = pos.double()[:, None] * inv[None, :]
        cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
        rotated = torch.cat([-x[:, half:], x[:, :half]], -1)
        return x * cos + rotated * sin

    out = []
    for b in range(ids.shape[0]):
        x = w[p + "wte.weight"][ids[b]]  # (T, D)
        T = x.shape[0]
        for layer in range(cfg.n_layers):
            q_ = p + f"blocks.{layer}."
            n = rms(x, w[q_ + "attn_norm.weight"])
            q, k, v = n @ w[q_ + "q_proj.weight"].T, n @ w[q_ + "k_proj.weight"].T, n @ w[q_ + "v_proj.weight"].T
            heads = []
            for h in range(cfg.n_heads):
                kv = h // group
                qh = rope(q[:, h * head_dim : (h + 1) * head_dim], positions[b])
                kh = rope(k[:, kv * head_dim : (kv + 1) * head_dim], positions[b])
                vh = v[:, kv * head_dim : (kv + 1) * head_dim]
                scores = qh @ kh.T / math.sqrt(head_dim)  # no causal mask: every query sees every key
                if key_mask is not None:
                    scores = scores.masked_fill(key_mask[b][None, :] == 0, -math.inf)
                heads.append(torch.softmax(scores, -1) @ vh)
            h_ = x + torch.cat(heads, -1) @ w[q_ + "attn_out.weight"].T
            n = rms(h_, w[q_ + "ff_norm.weight"])
            gate, up = n @ w[q_ + "ff_proj.weight"].T, n @ w[q_ + "up_proj.weight"].T
            x = h_ + (F.silu(gate) * up) @ w[q_ + "ff_out.weight"].T
            assert x.shape == (T, cfg.d_model)
        out.append(rms(x, w[p + "ln_f.weight"]) @ w[p + "ff_out.weight"].T)
    return torch.stack(out)


def test_forward_matches_formulas(model):
    ids = torch.randint(3, 60, (2, 11), generator=torch.Generator().manual_seed(1))
    logits = model(ids).logits
    assert logits.shape == (2, 11, 64) and logits.dtype == torch.float32
    expected = reference_forward(model, ids, torch.arange(11).expand(2, 11))
    torch.testing.assert_close(logits.double(), expected, atol=1e-4, rtol=1e-4)


def test_attention_is_bidirectional(model):
    ids = torch.randint(3, 60, (1, 8), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1 - 3) % 57 + 3
    first = model(ids).logits[0, 0]
    assert not torch.allclose(first, model(changed).logits[0, 0]), "the first position must see the last token"


def test_padding_keys_hidden_and_positions_start_at_first_token(model):
    ids = torch.randint(3, 60, (1, 7), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.full((1, 3), EOS), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 7)], dim=1).long()
    alone = model(ids).logits
    with_pad = model(padded, attention_mask=mask).logits[:, 3:]
    torch.testing.assert_close(with_pad, alone, atol=1e-5, rtol=1e-5)
    # the formulas agree: positions 0.. from the first real token, padding keys hidden
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = reference_forward(model, padded, positions, key_mask=mask)[:, 3:]
    torch.testing.assert_close(with_pad.double(), expected, atol=1e-4, rtol=1e-4)


def test_all_ones_mask_equals_no_mask_and_explicit_positions(model):
    ids = torch.randint(3, 60, (2, 9), generator=torch.Generator().manual_seed(4))
    plain = model(ids).logits
    torch.testing.assert_close(model(ids, attention_mask=torch.ones_like(ids)).logits, plain)
    torch.testing.assert_close(model(ids, position_ids=torch.arange(9).expand(2, 9)).logits, plain)
    shifted = model(ids, position_ids=torch.arange(5, 14).expand(2, 9)).logits
    torch.testing.assert_close(shifted, plain, atol=1e-4, rtol=1e-4)  # RoPE is relative: a shift changes nothing


def test_attention_bias_bool_hides_keys(model):
    ids = torch.randint(3, 60, (1, 6), generator=torch.Generator().manual_seed(5))
    allowed = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    allowed[..., 4:] = False  # nobody sees the last two keys
    biased = model(ids, attention_bias=allowed).logits[:, :4]
    prefix_only = model(ids[:, :4]).logits
    torch.testing.assert_close(biased, prefix_only, atol=1e-5, rtol=1e-5)


def test_logits_mask_returns_exactly_those_positions(model):
    """Logits only at asked positions (the last block's MLP runs only there): same values, row-major."""
    ids = torch.randint(3, 60, (3, 8), generator=torch.Generator().manual_seed(6))
    attention_mask = torch.ones(3, 8, dtype=torch.long)
    attention_mask[1, 6:] = 0  # right padding
    wanted = torch.rand(3, 8, generator=torch.Generator().manual_seed(7)) < 0.4
    wanted[1, 6:] = False
    full = model(ids, attention_mask=attention_mask).logits
    picked = model(ids, attention_mask=attention_mask, logits_mask=wanted).logits
    assert picked.shape == (int(wanted.sum()), full.shape[-1])
    torch.testing.assert_close(picked, full[wanted], atol=1e-5, rtol=1e-5)


def test_hidden_states_and_return_tuple(model):
    ids = torch.randint(3, 60, (1, 5))
    out = model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.n_layers + 1
    torch.testing.assert_close(model.model.lm_head(out.hidden_states[-1]), out.logits)
    as_tuple = model(ids, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.logits)
    with pytest.raises(ValueError, match="output_attentions"):
        model(ids, output_attentions=True)


def test_kv_caches_reproduce_the_full_forward_on_an_unchanged_canvas(model):
    """Plumbing of prefix and dual caches: with the canvas unchanged since the refresh, cached steps are exact."""
    ids = torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # a left-padded row
    full = model(ids, attention_mask=mask, use_cache=True)
    s, e = 5, 9
    prefix = [(k[:, :, :s], v[:, :, :s]) for k, v in full.past_key_values]
    cached = model(ids[:, s:], attention_mask=mask, past_key_values=prefix).logits
    torch.testing.assert_close(cached, full.logits[:, s:], atol=1e-5, rtol=1e-5)

    dual = [(k.clone(), v.clone()) for k, v in full.past_key_values]
    replace = torch.zeros_like(ids, dtype=torch.bool)
    replace[:, s:e] = True
    cached = model(ids[:, s:e], attention_mask=mask, past_key_values=dual, replace_position=replace).logits
    torch.testing.assert_close(cached, full.logits[:, s:e], atol=1e-5, rtol=1e-5)


def test_config_aliases_and_8b_parameter_count():
    cfg = tiny_config()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (32, 2, 4)
    assert GenjoConfig(hidden_size=48, num_attention_heads=6).d_model == 48
    big = GenjoConfig()
    assert (big.d_model, big.n_layers, big.mlp_hidden_size, big.embedding_size) == (4096, 32, 12288, 126464)
    assert (big.mask_token_id, big.eos_token_id, big.eot_token_id) == (126336, 126081, 126348)
    with torch.device("meta"):
        m = GenjoModelLM(big)
    assert sum(p.numel() for p in m.parameters()) == 8_015_581_184


def test_unsupported_architecture_values_raise():
    with pytest.raises(NotImplementedError, match="block_type"):
        tiny_model(block_type="sequential")
    with pytest.raises(NotImplementedError, match="alibi"):
        tiny_model(alibi=True)


def test_weight_tying_uses_the_embedding():
    m = tiny_model(weight_tying=True)
    assert "model.transformer.ff_out.weight" not in m.state_dict()
    ids = torch.randint(3, 60, (1, 4))
    hidden = m(ids, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(m(ids).logits, hidden @ m.model.transformer.wte.weight.T)


def test_bf16_forward_runs_and_keeps_norm_in_fp32():
    m = tiny_model().to(torch.bfloat16)
    ids = torch.randint(3, 60, (1, 6))
    logits = m(ids).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_rms_norm_and_forward_run_on_the_meta_device():
    """A shape-only dry run (benchmarks/bench_forward.py --dry-run) must not trip over autocast on meta."""
    from conftest import tiny_config

    with torch.device("meta"):
        model = GenjoModelLM(tiny_config()).eval()
        ids = torch.zeros(2, 7, dtype=torch.long)
    out = model(ids, use_cache=True)
    assert out.logits.shape == (2, 7, 64) and out.logits.device.type == "meta"
    assert out.past_key_values[0][0].shape == (2, 2, 7, 8)
