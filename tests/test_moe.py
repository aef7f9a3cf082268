"""LLaDA-MoE (genjo/modeling_genjo_moe.py): the release's logits, its published folder layout, the sampler's
invariants, and every tool (generate.py, chat, app, likelihood, eval harness, convert, training, benchmarks)."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import BOS, EOS, EOT, MASK, load_benchmark, run_outside_the_repo
from moe_folders import VARIANTS, logit_figures, published_moe_folder, reference_input_ids
from safetensors.torch import load_file, save_file

from genjo import GenjoMoeConfig, GenjoMoeModelLM, generate, get_log_likelihood
from genjo.configuration_genjo import RELEASE_SAMPLER_DEFAULTS
from genjo.loading import architecture_of, load_config, load_model
from genjo.modeling_genjo_moe import SparseMoe, load_balancing_loss
from genjo.sampling import DualCache, GenerationStats, PrefixCache

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = json.loads((ROOT / "tests" / "fixtures" / "moe_reference.json").read_text())

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_moe_config(**overrides) -> GenjoMoeConfig:
    fields = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  expert_intermediate_size=16, shared_expert_intermediate_size=24, num_experts=4,
                  num_experts_per_tok=2, moe_router_enable_expert_bias=True, max_position_embeddings=96,
                  rope_theta=10000.0, initializer_range=0.5, mask_token_id=MASK, eos_token_id=EOS, pad_token_id=EOS,
                  bos_token_id=BOS, eot_token_id=EOT)  # fmt: skip
    return GenjoMoeConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def moe():
    """A 2-block MoE (GQA, a shared expert, an expert bias) with large random weights, so answers vary."""
    torch.manual_seed(0)
    model = GenjoMoeModelLM(tiny_moe_config()).eval()
    with torch.no_grad():
        for block in model.model.layers:
            block.mlp.expert_bias.normal_(0, 0.1)
    return model


PROMPT = torch.tensor([[0, 3, 17, 22, 9, 41], [0, 3, 30, 31, 12, 8]])
PROMPTS = [[0, 3, 17, 22, 9, 41, 13], [0, 3, 30], [0, 44, 12, 8, 19]]


def left_padded(prompts):
    length = max(map(len, prompts))
    batch = torch.tensor([[EOS] * (length - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
    return batch, mask, length


# ----------------------------------------------------------------------------- the release's logits


def genjo_figures(folder, dtype) -> dict:
    model = load_model(str(folder), device="cpu", dtype=dtype, with_tokenizer=False)
    assert isinstance(model, GenjoMoeModelLM) and model.dtype == dtype
    with torch.no_grad():
        return logit_figures(model(reference_input_ids(model.config.vocab_size)).logits)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fp32_logits_equal_the_release_code(tmp_path, variant):
    """Genjo's logits on the published-layout folder equal those the release's modeling_lladamoe.py gave on it
    (tests/fixtures/record_moe_reference.py): every recorded value, the sums and the argmax of every position."""
    ours = genjo_figures(published_moe_folder(tmp_path, variant, torch.float32), torch.float32)
    theirs = REFERENCE["variants"][variant]["float32"]
    for (*position, value), (*where, expected) in zip(ours["picks"], theirs["picks"]):
        assert position == where and value == pytest.approx(expected, abs=1e-5), position
    for key in ("sum", "abs_sum", "square_sum"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-4), key
    assert ours["argmax"] == theirs["argmax"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bf16_logits_agree_with_the_release_code_within_its_own_bf16_error(tmp_path, variant):
    """In bf16 the release rotates q/k in bf16 where Genjo rotates in fp32 (GUIDELINES.md), so the logits are not
    bit-equal: they must be as close to the release's bf16 and fp32 logits as the release's bf16 is to its fp32."""
    ours = genjo_figures(published_moe_folder(tmp_path, variant, torch.bfloat16), torch.bfloat16)
    bf16, fp32 = (REFERENCE["variants"][variant][key] for key in ("bfloat16", "float32"))
    release_error = max(abs(a[-1] - b[-1]) for a, b in zip(bf16["picks"], fp32["picks"]))
    for reference in (bf16, fp32):
        error = max(abs(a[-1] - b[-1]) for a, b in zip(ours["picks"], reference["picks"]))
        assert error <= 2 * release_error, (error, release_error)
    same = sum(a == b for row, ref in zip(ours["argmax"], bf16["argmax"]) for a, b in zip(row, ref))
    assert same >= 23  # of 24 positions: a near-tie may flip


def test_dispatch_grouped_by_expert_equals_a_per_token_restatement():
    """The grouped dispatch computes, for each token, sum over its top-k experts of weight x SwiGLU expert(x),
    the weights being the (biased) softmax scores, renormalised and scaled when the config asks."""
    for overrides in ({}, {"norm_topk_prob": True, "routed_scaling_factor": 2.5}):
        torch.manual_seed(1)
        moe_layer = SparseMoe(tiny_moe_config(num_experts=6, num_experts_per_tok=3, **overrides))
        torch.nn.init.normal_(moe_layer.expert_bias, std=0.1)
        x = torch.randn(20, 32)
        out, logits = moe_layer(x)
        for n in range(20):
            scores = logits[n].softmax(-1) + moe_layer.expert_bias
            weights, chosen = scores.topk(3)
            if overrides:
                weights = 2.5 * weights / weights.sum()
            expected = sum(w * moe_layer.experts[int(e)](x[n]) for w, e in zip(weights, chosen))
            torch.testing.assert_close(out[n], expected, atol=1e-5, rtol=1e-5)


def test_an_idle_expert_still_gets_a_zero_gradient_so_data_parallel_training_runs():
    """DDP fails on a step where some process leaves a parameter out of the graph; an expert that no token chose
    must still receive a (zero) gradient, and without gradients it is skipped."""
    torch.manual_seed(0)
    moe_layer = SparseMoe(tiny_moe_config(expert_intermediate_size=8, num_experts=8, num_experts_per_tok=1))
    with torch.no_grad():
        moe_layer.expert_bias.zero_()
        moe_layer.expert_bias[3] = 10.0  # every token picks expert 3
    x = torch.randn(5, 32)
    out, _ = moe_layer(x)
    out.sum().backward()
    for e, expert in enumerate(moe_layer.experts):
        grads = [p.grad for p in expert.parameters()]
        assert all(g is not None for g in grads), f"expert {e} left out of the graph"
        assert all((g.abs().sum() > 0) == (e == 3) for g in grads), e
    calls = []
    for expert in moe_layer.experts:
        expert.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    with torch.no_grad():
        moe_layer(x)
    assert calls == [5]


def test_load_balancing_loss_is_the_switch_mixtral_form():
    """E * sum_e (share of tokens with e in their top-k) * (mean router probability of e), over all blocks."""
    torch.manual_seed(0)
    logits = (torch.randn(10, 4), torch.randn(6, 4))
    loss = load_balancing_loss(logits, num_experts=4, top_k=2)
    stacked = torch.cat(logits)
    probs, chosen = stacked.softmax(-1), stacked.softmax(-1).topk(2).indices
    share = torch.stack([(chosen == e).any(-1).float().mean() for e in range(4)])
    assert loss.item() == pytest.approx(4 * (share * probs.mean(0)).sum().item(), rel=1e-6)
    balanced = torch.log(torch.tensor([[4.0, 3, 2, 1], [1, 2, 3, 4]])).repeat(5, 1)  # each expert half the tokens
    assert load_balancing_loss((balanced,), 4, 2).item() == pytest.approx(2.0)  # k at balance


# ----------------------------------------------------------------------------- the published folder


def test_published_folder_loads_as_it_is_with_its_own_token_ids(tmp_path):
    folder = published_moe_folder(tmp_path, "shared_expert_bias", torch.bfloat16)
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"7": {"content": "<|x|>"},
                                                               "9": {"content": "<|role_end|>"}}}))  # fmt: skip
    config = load_config(str(folder))
    assert isinstance(config, GenjoMoeConfig) and architecture_of(json.loads((folder / "config.json").read_text()))
    # EOS from config.json, EoT from the tokenizer, the mask id of LLaDA-MoE (its config.json names none)
    assert (config.eos_token_id, config.eot_token_id, config.mask_token_id) == (1, 9, 156895)
    assert config.sampler_defaults == RELEASE_SAMPLER_DEFAULTS
    # the release's code never renormalises nor scales the top-k weights, whatever its config says
    assert (config.norm_topk_prob, config.routed_scaling_factor) == (False, 1.0)
    model = load_model(str(folder), device="cpu", dtype=torch.bfloat16, with_tokenizer=False)
    stored = {**load_file(folder / "model-00001-of-00002.safetensors"),
              **load_file(folder / "model-00002-of-00002.safetensors")}  # fmt: skip
    state = model.state_dict()
    assert set(state) == set(stored) and all(torch.equal(state[k], v) for k, v in stored.items())
    assert state["model.layers.0.mlp.expert_bias"].dtype == torch.bfloat16


def test_a_saved_model_keeps_genjo_names_and_reloads_the_same(tmp_path, moe):
    moe.save_pretrained(tmp_path / "saved")
    files = {p.name for p in (tmp_path / "saved").iterdir()}
    code = {"modeling_genjo_moe.py", "modeling_genjo.py", "configuration_genjo_moe.py", "configuration_genjo.py"}
    assert code <= files
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["model_type"] == "genjo_moe" and saved["architectures"] == ["GenjoMoeModelLM"]
    assert saved["auto_map"]["AutoModel"] == "modeling_genjo_moe.GenjoMoeModelLM"
    again = load_model(str(tmp_path / "saved"), device="cpu", with_tokenizer=False)
    assert torch.equal(again(PROMPT).logits, moe(PROMPT).logits)


def rewrite_shard(folder: Path, drop: str = None, reshape: str = None) -> None:
    """Remove the weight ``drop`` or widen the weight ``reshape`` by one row, in its shard and the index."""
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    name = drop or reshape
    shard = folder / index["weight_map"][name]
    tensors = load_file(shard)
    if drop:
        del tensors[drop], index["weight_map"][drop]
    else:
        tensors[reshape] = torch.cat([tensors[reshape], tensors[reshape][:1]])
    save_file(tensors, str(shard), metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    "damage,key",
    [
        (dict(drop="model.layers.1.mlp.experts.5.up_proj.weight"), "model.layers.1.mlp.experts.5.up_proj.weight"),
        (dict(drop="model.layers.0.mlp.expert_bias"), "model.layers.0.mlp.expert_bias"),
        (dict(reshape="model.layers.0.mlp.gate.weight"), "model.layers.0.mlp.gate.weight"),
    ],
)
def test_missing_or_mis_shaped_weights_are_an_error_naming_the_key(tmp_path, damage, key):
    folder = published_moe_folder(tmp_path, "shared_expert_bias", torch.float32)
    rewrite_shard(folder, **damage)
    with pytest.raises((ValueError, RuntimeError), match=key.replace(".", r"\.")):
        load_model(str(folder), device="cpu", with_tokenizer=False)


def test_the_architecture_comes_from_the_config_never_from_model_type(tmp_path):
    assert architecture_of({"model_type": "llada", "architectures": ["LLaDAMoEModelLM"]}) == "moe"
    assert architecture_of({"model_type": "llada", "architectures": ["LLaDAModelLM"]}) == "dense"
    assert architecture_of({"model_type": "llada", "num_experts": 64, "expert_intermediate_size": 1024}) == "moe"
    assert architecture_of({"model_type": "llada", "d_model": 4096, "n_layers": 32}) == "dense"
    with pytest.raises(ValueError, match=r"LlamaForCausalLM.*which Genjo does not run"):
        architecture_of({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "folder")
    with pytest.raises(ValueError, match="neither an architecture Genjo runs nor the keys"):
        architecture_of({"model_type": "llada", "hidden_size": 64})
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MixtralForCausalLM"], "num_experts": 8}))
    with pytest.raises(ValueError, match="MixtralForCausalLM"):
        load_model(str(tmp_path), device="cpu", with_tokenizer=False)


@pytest.mark.parametrize(
    "overrides,key",
    [
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling"),
        (dict(moe_router_score_function="sigmoid"), "moe_router_score_function"),
        (dict(router_num_group=4, router_topk_group=2), "router_num_group"),
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(num_experts_per_tok=5), "num_experts_per_tok"),
        (dict(moe_layer_freq=[1]), "moe_layer_freq"),
        (dict(partial_rotary_factor=-1), "partial_rotary_factor"),
    ],
)
def test_configs_it_cannot_run_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ValueError, match=key):
        GenjoMoeModelLM(tiny_moe_config(**overrides))


# ----------------------------------------------------------------------------- what the sampler relies on


def test_logits_mask_and_padding_and_meta_device(moe):
    full = moe(PROMPT).logits
    read = torch.zeros(PROMPT.shape, dtype=torch.bool)
    read[:, 3:5] = True
    torch.testing.assert_close(moe(PROMPT, logits_mask=read).logits, full[read], atol=1e-6, rtol=1e-6)
    batch, mask, length = left_padded(PROMPTS)
    padded = moe(batch, attention_mask=mask).logits
    for row, p in enumerate(PROMPTS):
        torch.testing.assert_close(padded[row, length - len(p) :], moe(torch.tensor([p])).logits[0])
    with torch.device("meta"):
        meta = GenjoMoeModelLM(tiny_moe_config())
    assert meta(torch.zeros(2, 9, dtype=torch.long, device="meta")).logits.shape == (2, 9, 64)


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
@pytest.mark.parametrize("threshold", [None, 0.5])
def test_left_padded_batch_equals_each_prompt_alone(moe, cache, threshold):
    batch, mask, length = left_padded(PROMPTS)
    kwargs = dict(steps=16, gen_length=16, block_length=8, cache=cache, threshold=threshold)
    out = generate(moe, batch, mask, **kwargs)
    assert not (out == MASK).any()
    for row, p in enumerate(PROMPTS):
        assert torch.equal(out[row, length:], generate(moe, torch.tensor([p]), **kwargs)[0, len(p) :]), row


@pytest.mark.parametrize("cache", [PrefixCache, DualCache])
@pytest.mark.parametrize("cfg", [0.0, 1.0])
def test_cache_refreshed_every_step_equals_no_cache(moe, cache, cfg):
    kwargs = dict(steps=16, gen_length=16, block_length=8, cfg_scale=cfg)
    stats = GenerationStats()
    out = generate(moe, PROMPT, cache=cache(refresh_every=1), stats=stats, **kwargs)
    assert torch.equal(out, generate(moe, PROMPT, **kwargs)) and stats.nfe_refresh == 16


def test_device_map_with_disk_offload_places_whole_blocks_and_gives_the_same_tokens(tmp_path):
    torch.manual_seed(0)
    model = GenjoMoeModelLM(tiny_moe_config(num_hidden_layers=4, vocab_size=16)).eval()
    model.save_pretrained(tmp_path / "ckpt")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    offloaded = load_model(str(tmp_path / "ckpt"), with_tokenizer=False, device_map="auto",
                           max_memory={"cpu": size // 2}, offload_folder=str(tmp_path / "offload"))  # fmt: skip
    placement = offloaded.hf_device_map
    assert placement["model.layers.0"] == "cpu" and placement["model.layers.3"] == "disk"  # experts with their block
    assert not [name for name in placement if name.count(".") > 2], placement
    prompt = PROMPT % 16
    for cache in (None, "prefix", "dual"):
        kwargs = dict(steps=16, gen_length=16, block_length=8, cache=cache)
        assert torch.equal(generate(offloaded, prompt, **kwargs), generate(model, prompt, **kwargs)), cache


def test_cfg_factor_early_stop_and_random_remasking_run(moe):
    batch, mask, length = left_padded(PROMPTS)
    for kwargs in (dict(cfg_scale=1.5), dict(factor=1.0), dict(temperature=0.7, remasking="random"),
                   dict(early_stop=True), dict(cache="dual", threshold=0.3, early_stop=True)):  # fmt: skip
        torch.manual_seed(0)
        out = generate(moe, batch, mask, steps=16, gen_length=16, block_length=8, **kwargs)
        assert out.shape == (3, length + 16) and torch.equal(out[:, :length], batch) and not (out == MASK).any()


def test_likelihood_reads_the_head_only_at_masked_slots(moe):
    """The likelihood asks the MoE for logits at masked slots (logits_mask); the estimate equals the full head's."""

    class FullHead(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner, self.config = model, model.config

        def forward(self, input_ids, **kwargs):
            return self.inner(input_ids, **kwargs)

    prompt, answer = torch.tensor([0, 3, 17, 22]), torch.tensor([9, 41, 13])
    masked = get_log_likelihood(moe, prompt, answer, mc_num=8, batch_size=4, generator=torch.Generator().manual_seed(0))
    full = get_log_likelihood(FullHead(moe), prompt, answer, mc_num=8, batch_size=4,
                              generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert masked == pytest.approx(full, rel=1e-5) and masked < 0


# ----------------------------------------------------------------------------- every tool, through load_model


@pytest.fixture(scope="module")
def moe_folder(tmp_path_factory, tiny_tokenizer) -> str:
    """A Genjo MoE folder (trained by no one) with the embedded tokenizer, written by genjo.train's new_model."""
    from genjo.train import TrainArgs, new_model

    folder = tmp_path_factory.mktemp("tiny-moe")
    torch.manual_seed(0)
    args = TrainArgs(d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64, num_experts=4, experts_per_token=2)
    model = new_model(args, tiny_tokenizer)
    assert isinstance(model, GenjoMoeModelLM) and model.config.expert_intermediate_size == 32
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return str(folder)


def test_generate_py_answers_a_jsonl_file(moe_folder, tmp_path):
    import generate as generate_script

    lines = [{"id": i, "messages": [{"role": "user", "content": q}]} for i, q in enumerate(["Sort: 3 1 2", "Hi"])]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    generate_script.main(["--model", moe_folder, "--device", "cpu", "--input", str(tmp_path / "in.jsonl"),
                          "--output", str(tmp_path / "out.jsonl"), "--gen-length", "8", "--steps", "8",
                          "--block-length", "8"])  # fmt: skip
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["id"] for o in out] == [0, 1] and all(isinstance(o["answer"], str) for o in out)


def test_chat_and_app_answer_through_load_model(moe_folder):
    import app
    import chat
    from genjo.denoising_view import generate_response_with_visualization

    model, tokenizer = load_model(moe_folder, device="cpu")
    session = chat.ChatSession(model, tokenizer, gen_length=8, steps=8, block_length=8)
    inputs, printed = iter(["What is 1 + 2?"]), []

    def read(prompt):
        try:
            return next(inputs)
        except StopIteration:
            raise EOFError from None

    assert chat.chat_loop(session, input_fn=read, print_fn=printed.append) == 0 and len(session.turns) == 1
    messages = [{"role": "user", "content": "Sort: 3 1 2"}]
    frames, text = generate_response_with_visualization(model, tokenizer, "cpu", messages, gen_length=8, steps=4,
                                                        block_length=8)  # fmt: skip
    assert len(frames) >= 4 and isinstance(text, str)
    assert app.slider_values(model)  # the demo's sliders read the MoE config


def test_eval_harness_scores_and_generates(moe_folder):
    from types import SimpleNamespace

    from genjo.eval_harness import GenjoEvalHarness

    harness = GenjoEvalHarness(model_path=moe_folder, mc_num=4, batch_size=4, steps=8, gen_length=8, block_length=8,
                               device="cpu")  # fmt: skip
    assert isinstance(harness.model, GenjoMoeModelLM)
    ((score, _greedy),) = harness.loglikelihood([SimpleNamespace(args=("Sort: 3 1 2 gives", " 1 2 3"))])
    assert score < 0
    (answer,) = harness.generate_until([SimpleNamespace(args=("What is 1 + 2?", {"until": ["\n"]}))])
    assert isinstance(answer, str)


@pytest.mark.slow
def test_convert_re_saves_a_published_folder_that_auto_model_loads_alone(tmp_path, tiny_tokenizer):
    from genjo.convert import convert

    folder = published_moe_folder(tmp_path / "published", "tied_dense_partial_rope", torch.float32)
    tiny_tokenizer.save_pretrained(folder)
    convert(str(folder), str(tmp_path / "converted"))
    ids = reference_input_ids(96)
    model = load_model(str(folder), device="cpu", with_tokenizer=False)
    torch.save(model(ids).logits, tmp_path / "expected.pt")
    run_outside_the_repo(
        textwrap.dedent(f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "converted")!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "GenjoMoeModelLM", type(model)
        ids = torch.tensor({ids.tolist()})
        assert torch.equal(model(ids).logits, torch.load({str(tmp_path / "expected.pt")!r})), "logits differ"
        print("OK")
    """),
        tmp_path,
    )


@pytest.mark.slow
def test_training_from_scratch_and_from_a_published_folder_logs_the_router_loss(tmp_path, tiny_tokenizer):
    from genjo.train import TrainArgs, train

    common = dict(d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64, batch_size=8, lr=3e-3, warmup_steps=2,
                  save_every=1000, eval_every=5, eval_problems=1, resume=False, seq_len=32)  # fmt: skip
    train(TrainArgs(stage="pretrain", run_dir=str(tmp_path / "base"), steps=10, num_experts=4, **common))
    curve = [json.loads(line) for line in (tmp_path / "base" / "learning_curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [5, 10] and all(1.9 < r["router_loss"] < 4 for r in curve), curve
    assert curve[-1]["loss"] < curve[0]["loss"]

    published = published_moe_folder(tmp_path / "published", "shared_expert_bias", torch.bfloat16,
                                     overrides={"vocab_size": 512, "mask_token_id": 2, "eos_token_id": 1})  # fmt: skip
    tiny_tokenizer.save_pretrained(published)
    final = train(TrainArgs(stage="sft", run_dir=str(tmp_path / "sft"), init=str(published), steps=4,
                            **{**common, "eval_every": 4}))  # fmt: skip
    record = json.loads((tmp_path / "sft" / "learning_curve.jsonl").read_text().splitlines()[-1])
    assert record["router_loss"] > 0 and "accuracy" in record
    assert isinstance(load_model(final, device="cpu", with_tokenizer=False), GenjoMoeModelLM)


def test_fsdp_config_wraps_one_block_per_unit():
    from accelerate.utils.dataclasses import get_module_class_from_name

    text = (ROOT / "configs" / "fsdp_moe.yaml").read_text()
    assert "fsdp_transformer_layer_cls_to_wrap: GenjoMoeBlock" in text
    model = GenjoMoeModelLM(tiny_moe_config())
    assert get_module_class_from_name(model, "GenjoMoeBlock") is type(model.model.layers[0])
    assert GenjoMoeModelLM._no_split_modules == ["GenjoMoeBlock"]


# ----------------------------------------------------------------------------- benchmarks


def test_bench_forward_dry_run_of_the_7b_a1b_on_meta(capsys):
    bench_forward = load_benchmark("bench_forward")
    args = __import__("argparse").Namespace(length=320, gen_length=64, block_length=32, batch_size=1)
    bench_forward.dry_run(GenjoMoeConfig(), torch.bfloat16, args)
    printed = capsys.readouterr().out
    assert "7,356,880,896 parameters" in printed and "1,397,823,488 active parameters" in printed
    assert "weights 13.70 GiB" in printed and "| full forward | (1, 320) | (1, 320, 157184) |" in printed


def test_moe_forward_flops_equal_torch_flop_counter(moe):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    bench_forward = load_benchmark("bench_forward")
    config = tiny_moe_config(moe_layer_freq=[0, 1], dense_intermediate_size=40)
    model = bench_forward.random_model(config, torch.device("cpu"), torch.float32)
    kinds = bench_forward.forward_kinds(model, length=40, gen_length=32, block_length=8, batch_size=2)
    for name, (queries, keys, run) in kinds.items():
        with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            run()
        assert counter.get_total_flops() == 2 * bench_forward.forward_flops(config, queries, keys, queries), name


def test_context_extension_is_refused_for_the_moe_config_rather_than_ignored():
    from genjo.long_context import extend_context

    with pytest.raises(ValueError, match="context extension is implemented for the dense Genjo architecture"):
        extend_context(GenjoMoeConfig(), 16384)


def test_the_moe_model_has_the_transformers_style_generate(moe):
    """model.generate is the dense model's (one mixin over the one sampler): the same tokens as genjo.generate."""
    from genjo import generate

    prompt = torch.tensor([[0, 3, 17, 22, 9]])
    settings = dict(steps=8, gen_length=8, block_length=8)
    via_model = moe.generate(prompt, max_new_tokens=8, steps=8, block_length=8)
    assert torch.equal(via_model, generate(moe, prompt, **settings))
