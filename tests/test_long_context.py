"""Long context: the RoPE scaling law, the scaled base in the config and the model, loading at a longer
context, attention without a T x T tensor, document-level attention masks in packed training rows."""

import argparse
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import EOS, MASK, tiny_config, tiny_model

from genjo import GenjoModelLM, generate, load_model, niah, rope_scaling_factor
from genjo.chat_format import user_turn_ids
from genjo.loading import DEFAULT_MODEL, add_model_arguments, load_from_args
from genjo.long_context import critical_dimension, extend_context
from genjo.modeling_genjo import additive_attention_bias
from genjo.niah import make_needle
from genjo.train import TrainArgs, check_args, packed_rows, train
from genjo.train.data import document_attention_mask, row_attention

ROOT = Path(__file__).resolve().parent.parent
# The published 8B: trained at 4096 tokens, RoPE base 500000, head dimension 128.
TRAIN, BASE, HEAD_DIM = 4096, 500000.0, 128


# ----------------------------------------------------------------------------- the law


@pytest.mark.parametrize("target, factor", [(8192, 4), (16384, 14), (24576, 31), (32768, 55)])
def test_ntk_law_gives_longllada_factors_for_the_8b(target, factor):
    assert rope_scaling_factor(TRAIN, target, BASE, HEAD_DIM) == float(factor)


def test_diffusion_aware_law_for_the_8b_at_128k_is_562():
    """Both lengths doubled: d_crit = 70 instead of 64, and the law's 561.94 rounds up to 562."""
    assert critical_dimension(TRAIN, BASE, HEAD_DIM) == 64
    assert critical_dimension(2 * TRAIN, BASE, HEAD_DIM) == 70
    exact = (2 * 131072 / (2 * math.pi)) ** (HEAD_DIM / 70) / BASE
    assert 561.9 < exact < 562.0
    assert rope_scaling_factor(TRAIN, 131072, BASE, HEAD_DIM, diffusion_aware=True) == 562.0
    assert rope_scaling_factor(TRAIN, 131072, BASE, HEAD_DIM) == 871.0  # plain NTK asks for more


def test_no_scaling_up_to_the_trained_length():
    assert rope_scaling_factor(TRAIN, TRAIN, BASE, HEAD_DIM) == 1.0
    assert rope_scaling_factor(TRAIN, 100, BASE, HEAD_DIM, diffusion_aware=True) == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(train_length=0), "train_length must be a positive int"),
        (dict(target_length=8192.0), "target_length must be a positive int"),
        (dict(rope_theta=1.0), "rope_theta must be a number > 1"),
        (dict(head_dim=127), "head_dim must be even"),
    ],
)
def test_law_rejects_bad_arguments(kwargs, message):
    arguments = {**dict(train_length=TRAIN, target_length=8192, rope_theta=BASE, head_dim=HEAD_DIM), **kwargs}
    with pytest.raises(ValueError, match=message):
        rope_scaling_factor(**arguments)


# ----------------------------------------------------------------------------- config and model


def test_scaled_base_sets_the_inverse_frequencies():
    """inv_freq_j = (b lambda)^(-2j/d): the angle of position 1 in the model's RoPE tables."""
    config = extend_context(tiny_config(max_sequence_length=64), 256, rope_scaling=14)
    assert config.rope_extension == dict(rope_scaling="factor", factor=14.0, train_length=64, context_length=256)
    assert config.max_sequence_length == 256 and config.rope_theta == 10000.0 and config.rope_base == 140000.0
    model = GenjoModelLM(config)
    cos, sin = model.model.rotary_emb.tables(2, torch.device("cpu"))
    head_dim = config.d_model // config.n_heads
    expected = 1.0 / 140000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angle = torch.atan2(sin[1, : head_dim // 2], cos[1, : head_dim // 2]).double()
    torch.testing.assert_close(angle, expected, rtol=1e-6, atol=1e-9)


def test_scaled_model_equals_a_model_built_with_the_scaled_base():
    ids = torch.randint(6, 60, (2, 40))
    scaled = tiny_model(0, rope_extension=dict(rope_scaling="factor", factor=4.0, train_length=96, context_length=96))
    direct = tiny_model(0, rope_theta=40000.0)
    plain = tiny_model(0)
    assert torch.equal(scaled(ids).logits, direct(ids).logits)
    assert not torch.allclose(scaled(ids).logits, plain(ids).logits)


@pytest.fixture(scope="module")
def embedded():
    return load_model(DEFAULT_MODEL, device="cpu")


@pytest.mark.parametrize(
    "context_length, rope_scaling", [(1024, "diffusion-aware"), (512, "ntk"), (3000, 1), (3000, "none")]
)
def test_factor_one_is_bit_identical_to_today(embedded, context_length, rope_scaling, one_thread):
    model, tokenizer = embedded
    other, _ = load_model(DEFAULT_MODEL, device="cpu", context_length=context_length, rope_scaling=rope_scaling)
    assert other.model.rotary_emb.theta == model.config.rope_theta
    ids = torch.randint(6, len(tokenizer), (2, 120))
    ids[:, 60:100] = model.config.mask_token_id
    with torch.no_grad():
        assert torch.equal(other(ids).logits, model(ids).logits)


def test_load_model_at_a_longer_context_scales_the_base_and_lets_the_sampler_through(embedded, tmp_path, one_thread):
    model, tokenizer = embedded
    train = model.config.max_sequence_length  # 1024
    prompt = torch.randint(6, len(tokenizer), (1, train - 16))
    with pytest.raises(ValueError, match="max_sequence_length"):
        generate(model, prompt, steps=2, gen_length=32, block_length=32)

    long, _ = load_model(DEFAULT_MODEL, device="cpu", context_length=4 * train)  # diffusion-aware by default
    factor = rope_scaling_factor(train, 4 * train, model.config.rope_theta, 32, diffusion_aware=True)
    assert long.config.rope_extension == dict(rope_scaling="diffusion-aware", factor=factor, train_length=train,
                                              context_length=4 * train)  # fmt: skip
    assert long.config.max_sequence_length == 4 * train and long.model.rotary_emb.theta == 10000.0 * factor
    out = generate(long, prompt, steps=2, gen_length=32, block_length=32)
    assert out.shape == (1, train + 16)

    # Saved, the extension is in config.json; loaded again (at the same or a shorter context) it is not
    # applied twice, and a longer context scales from the trained base.
    long.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again, _ = load_model(str(tmp_path), device="cpu", context_length=2 * train)
    assert again.config.rope_extension == long.config.rope_extension
    assert again.model.rotary_emb.theta == long.model.rotary_emb.theta
    longer, _ = load_model(str(tmp_path), device="cpu", context_length=8 * train, rope_scaling="ntk")
    expected = rope_scaling_factor(train, 8 * train, 10000.0, 32)
    assert longer.config.rope_extension["factor"] == max(expected, factor)
    assert longer.config.rope_extension["train_length"] == train


def test_a_config_that_covers_the_length_loads_as_it_is():
    """A long-context release (a larger base, max_sequence_length at the long length) is not scaled again."""
    config = tiny_config(rope_theta=5.0e6, max_sequence_length=4096)
    extend_context(config, 4096)
    assert config.rope_extension is None and config.rope_base == 5.0e6
    recorded = dict(rope_scaling="ntk", factor=50.0, train_length=96, context_length=1024)
    config = tiny_config(max_sequence_length=1024, rope_extension=dict(recorded))
    extend_context(config, 2048, rope_scaling="ntk")  # the law asks for less than the recorded 50
    assert config.rope_extension["factor"] == 50.0 and config.max_sequence_length == 2048


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(context_length=0), "context_length must be a positive int"),
        (dict(context_length=4096, rope_scaling="yarn"), "rope_scaling must be one of diffusion-aware, ntk, none"),
        (dict(context_length=4096, rope_scaling=0.5), "a factor >= 1"),
    ],
)
def test_load_model_rejects_bad_context_arguments_before_loading(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_model("/no/such/folder", **kwargs)  # the folder would be a FileNotFoundError after the check


def test_every_script_gets_context_length_through_the_shared_model_arguments():
    parser = add_model_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--device", "cpu", "--context-length", "2048", "--rope-scaling", "14"])
    model, _ = load_from_args(args)
    assert model.config.rope_extension["factor"] == 14.0 and model.config.max_sequence_length == 2048
    assert parser.parse_args([]).rope_scaling == "diffusion-aware"


# ----------------------------------------------------------------------------- attention without T x T


def test_padding_mask_becomes_a_broadcast_key_bias_not_a_square_one():
    """The padding bias is (B, 1, 1, S): SDPA broadcasts it, so a fused kernel never holds T x T of it."""
    mask = torch.ones(2, 50, dtype=torch.long)
    mask[1, :7] = 0
    bias = additive_attention_bias(mask, None, 50, 50, torch.float32)
    assert bias.shape == (2, 1, 1, 50)
    assert additive_attention_bias(torch.ones(2, 50), None, 50, 50, torch.float32) is None


@pytest.mark.slow
def test_one_forward_at_growing_length_holds_no_square_tensor():
    """The extra peak of one forward at T = 4096, in a fresh process, is less than one head's T x T scores,
    with and without a padding mask (benchmarks/bench_memory.py --context-lengths shows the linear growth)."""
    import subprocess
    import sys

    script = f"""
import torch, sys
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
from genjo import GenjoConfig, GenjoModelLM
def rss(field):
    return next(int(l.split()[1]) * 1024 for l in Path('/proc/self/status').read_text().splitlines()
                if l.startswith(field + ':'))
torch.set_num_threads(1)
config = GenjoConfig(d_model=64, n_layers=1, n_heads=8, mlp_hidden_size=64, vocab_size=16, embedding_size=16,
                     max_sequence_length=4096, mask_token_id=3)
model = GenjoModelLM(config).eval()
for padded in (0, 1):
    for T in (1024, 4096):
        ids = torch.randint(0, 16, (1, T))
        mask = torch.ones(1, T, dtype=torch.long)
        mask[0, :5] = 1 - padded
        with torch.inference_mode():
            model(ids[:, :64], attention_mask=mask[:, :64])
            Path('/proc/self/clear_refs').write_text('5')
            before = rss('VmRSS')
            model(ids, attention_mask=mask)
            print(padded, T, rss('VmHWM') - before)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    extra = {(padded, T): peak for padded, T, peak in (map(int, line.split()) for line in result.stdout.splitlines())}
    one_head = 4096 * 4096 * 4  # a single head's fp32 score matrix at T = 4096: 64 MiB (all 8 heads: 512 MiB)
    for padded in (0, 1):  # without and with a padding mask
        assert extra[padded, 4096] < one_head / 2, extra


# ----------------------------------------------------------------------------- packing documents into rows


def test_document_mask_marks_each_document_with_its_eos():
    ids = torch.tensor([[7, 8, EOS, 9, EOS, 10, 11]])
    mask = document_attention_mask(ids, EOS)
    documents = [0, 0, 0, 1, 1, 2, 2]
    expected = torch.tensor([[a == b for b in documents] for a in documents])
    assert mask.shape == (1, 1, 7, 7) and torch.equal(mask[0, 0], expected)


def test_under_document_masks_another_document_does_not_change_a_documents_logits(model):
    """Perturbing every token of document B leaves the logits of A and C bit-identical; without the masks
    (packing 'eod') they change."""
    torch.manual_seed(0)
    a, b, c = torch.randint(6, 60, (10,)), torch.randint(6, 60, (12,)), torch.randint(6, 60, (9,))
    row = torch.cat([a, torch.tensor([EOS]), b, torch.tensor([EOS]), c])[None]  # (1, 33)
    row[0, [2, 5, 20, 28]] = MASK  # a partially masked row, as in training
    other = row.clone()
    other[0, 11:23] = (row[0, 11:23] - 6 + 17) % 54 + 6  # every token of B replaced by another real token
    in_b = torch.zeros(row.shape[1], dtype=torch.bool)
    in_b[11:24] = True  # B and the EOS that ends it
    assert torch.equal(document_attention_mask(other, EOS), document_attention_mask(row, EOS))
    with torch.no_grad():
        masked = model(row, attention_bias=document_attention_mask(row, EOS)).logits[0]
        masked_other = model(other, attention_bias=document_attention_mask(other, EOS)).logits[0]
        plain, plain_other = model(row).logits[0], model(other).logits[0]
    assert torch.equal(masked[~in_b], masked_other[~in_b])
    assert not torch.allclose(masked[in_b], masked_other[in_b])
    assert not torch.allclose(plain[~in_b], plain_other[~in_b])


@pytest.mark.parametrize("packing, separated", [("eod", True), ("document", True), ("concat", False)])
def test_packing_joins_documents_with_eos_or_nothing(packing, separated, tiny_tokenizer):
    import random

    args = TrainArgs(stage="pretrain", seq_len=48, batch_size=4, packing=packing)
    rows = packed_rows(random.Random(0), tiny_tokenizer, 4, 48, packing)
    assert all(len(r) == 48 for r in rows)
    assert any(tiny_tokenizer.eos_token_id in r for r in rows) == separated
    batch = torch.tensor(rows)
    bias = row_attention(args, batch, tiny_tokenizer.eos_token_id)
    assert (bias is not None) == (packing == "document")


def test_pretraining_with_document_masks_passes_them_to_the_model(tmp_path, monkeypatch, one_thread):
    seen = []
    forward = GenjoModelLM.forward

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("attention_bias"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GenjoModelLM, "forward", spy)
    train(TrainArgs(stage="pretrain", run_dir=str(tmp_path), packing="document", seq_len=24, steps=2, eval_every=2,
                    d_model=16, n_layers=1, n_heads=2, mlp_hidden_size=32, batch_size=4, warmup_steps=1,
                    save_every=100, resume=False, crop_prob=0.0))  # fmt: skip
    assert len(seen) == 2 and all(b is not None and b.shape == (4, 1, 24, 24) and b.dtype == torch.bool for b in seen)
    assert not all(bool(b.all()) for b in seen)  # the rows hold several documents


def test_bad_packing_is_a_clear_error():
    with pytest.raises(ValueError, match="packing must be 'eod', 'document' or 'concat'"):
        check_args(TrainArgs(packing="docs"))


# ----------------------------------------------------------------------------- needle in a haystack


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_needle_sits_at_its_depth_in_a_haystack_of_the_asked_length(embedded, depth):
    _, tokenizer = embedded
    needle = make_needle(tokenizer, 400, depth, seed=3)
    prompt = user_turn_ids(tokenizer, needle.text)
    assert 360 <= len(prompt) <= 400
    assert needle.text.endswith(f"What is the magic number of {needle.name}?")
    assert needle.number.isdigit() and len(needle.number) == 4
    filler = needle.text.rsplit("\n\n", 1)[0]
    at = filler.index(f"The magic number of {needle.name} is {needle.number}.") / len(filler)
    assert abs(at - depth) < 0.1
    assert make_needle(tokenizer, 400, depth, seed=3) == needle  # deterministic


def test_grid_scores_answers_holding_the_number(embedded, monkeypatch, tmp_path):
    """Cells get the share of answers that hold the needle's number (answers scripted: right at depth 0 only)."""
    model, tokenizer = embedded

    def scripted(model, tokenizer, questions, batch_size, **kwargs):
        assert kwargs["gen_length"] == 8
        numbers = [re.search(r"The magic number of [a-z ]+ is (\d+)\.", q).group(1) for q in questions]
        right = [q.split("\n\n")[0].startswith("The magic number") for q in questions]
        return [f"It is {n}." if r else "It is 0." for n, r in zip(numbers, right)]

    monkeypatch.setattr(niah, "answer_questions", scripted)
    results = niah.run_grid(model, tokenizer, [200, 300], [0.0, 1.0], samples=3, progress=False, gen_length=8)
    accuracy = {(c["length"], c["depth"]): c["accuracy"] for c in results["cells"]}
    assert accuracy == {(200, 0.0): 1.0, (200, 1.0): 0.0, (300, 0.0): 1.0, (300, 1.0): 0.0}
    assert results["rope_base"] == 10000.0 and results["settings"]["gen_length"] == 8
    assert "| 0 | 100 | 100 |" in niah.accuracy_table(results)
    niah.plot_heatmap(results, str(tmp_path / "map.png"))
    assert (tmp_path / "map.png").stat().st_size > 1000


def test_grid_beyond_the_context_names_the_flag(embedded):
    model, tokenizer = embedded
    with pytest.raises(ValueError, match="pass --context-length 2080"):
        niah.run_grid(model, tokenizer, [512, 2048], [0.5], gen_length=32)
    with pytest.raises(ValueError, match="depths must lie in 0..1"):
        niah.run_grid(model, tokenizer, [512], [1.5])


@pytest.mark.slow
def test_eval_niah_writes_json_and_heat_map(tmp_path, monkeypatch, one_thread):
    import json
    import sys

    import eval_niah

    out = tmp_path / "niah.json"
    argv = ["eval_niah.py", "--device", "cpu", "--lengths", "150,1100", "--depths", "0,1", "--samples", "1",
            "--gen-length", "8", "--steps", "8", "--block-length", "8", "--context-length", "1120",
            "--output", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    eval_niah.main()
    results = json.loads(out.read_text())
    assert [(c["length"], c["depth"], c["n"]) for c in results["cells"]] == [(150, 0, 1), (150, 1, 1),
                                                                             (1100, 0, 1), (1100, 1, 1)]  # fmt: skip
    assert results["max_sequence_length"] == 1120 and results["rope_extension"]["rope_scaling"] == "diffusion-aware"
    assert (tmp_path / "niah.png").exists()
