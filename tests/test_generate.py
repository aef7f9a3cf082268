"""The sampler: token-exact against a literal transcription of the reference algorithm, and its invariants."""

import pytest
import torch
import torch.nn.functional as F
from conftest import EOS, EOT, MASK, tiny_model

from genjo.sampling import (
    DualCache,
    GenerationStats,
    PrefixCache,
    add_gumbel_noise,
    commit_top_k,
    generate,
    get_num_transfer_tokens,
    rand_columns,
    token_confidence,
)


@torch.no_grad()
def reference_generate(model, prompt, steps, gen_length, block_length, cfg_scale=0.0,
                       logits_eos_inf=False, confidence_eos_eot_inf=False):  # fmt: skip
    """The reference sampler at temperature 0, written plainly: per row, per step, a Python loop over candidates."""
    B, L = prompt.shape
    x = torch.full((B, L + gen_length), MASK, dtype=torch.long)
    x[:, :L] = prompt
    prompt_index = x != MASK
    num_blocks = gen_length // block_length
    spb = steps // num_blocks
    for b in range(num_blocks):
        s, e = L + b * block_length, L + (b + 1) * block_length
        n_masks = (x[:, s:e] == MASK).sum(1).tolist()
        for i in range(spb):
            if cfg_scale > 0:
                un = x.clone()
                un[prompt_index] = MASK
                cond, unc = model(torch.cat([x, un])).logits.chunk(2)
                logits = unc + (cfg_scale + 1) * (cond - unc)
            else:
                logits = model(x).logits
            if logits_eos_inf:
                logits[:, :, EOS] = -torch.inf
            x0 = logits.argmax(-1)
            conf_logits = logits.clone().double()
            if confidence_eos_eot_inf:
                conf_logits[:, :, [EOS, EOT]] = -torch.inf
            probs = F.softmax(conf_logits, dim=-1)
            for j in range(B):
                k = n_masks[j] // spb + (1 if i < n_masks[j] % spb else 0)
                candidates = [c for c in range(L, e) if x[j, c] == MASK]
                # most confident first; ties to the lower column
                candidates.sort(key=lambda c: (-probs[j, c, x0[j, c]].item(), c))
                for c in candidates[:k]:
                    x[j, c] = x0[j, c]
    return x


PROMPT = torch.tensor([[0, 3, 17, 22, 9, 41], [0, 3, 30, 31, 12, 8]])


@pytest.mark.parametrize(
    "steps,gen_length,block_length,cfg,eos_inf,conf_inf",
    [
        (16, 16, 16, False, False, False),  # fixed length, one block
        (8, 16, 16, False, False, False),  # two tokens per step
        (16, 16, 4, False, False, False),  # semi-autoregressive
        (12, 24, 8, 1.5, False, False),  # CFG, no attention mask
        (16, 16, 8, 0.0, True, False),
        (16, 16, 8, 0.0, False, True),
        (12, 24, 6, 0.5, False, True),
    ],
)
def test_matches_reference_at_temperature_zero(model, steps, gen_length, block_length, cfg, eos_inf, conf_inf):
    kwargs = dict(logits_eos_inf=eos_inf, confidence_eos_eot_inf=conf_inf)
    expected = reference_generate(model, PROMPT, steps, gen_length, block_length, cfg, **kwargs)
    out = generate(
        model, PROMPT, steps=steps, gen_length=gen_length, block_length=block_length, cfg_scale=cfg, **kwargs
    )
    assert torch.equal(out, expected)
    assert len(set(out[:, PROMPT.shape[1] :].flatten().tolist())) > 2, "degenerate test: the model repeats one token"


def test_num_transfer_tokens_schedule():
    block_mask = torch.zeros(2, 12, dtype=torch.bool)
    block_mask[0, :10] = True
    block_mask[1, :3] = True
    schedule = get_num_transfer_tokens(block_mask, 4)
    assert schedule.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0]] and schedule.dtype == torch.int64


def test_gumbel_noise_is_float64_and_identity_at_zero():
    logits = torch.randn(2, 3, 7)
    assert add_gumbel_noise(logits, 0.0) is logits
    noisy = add_gumbel_noise(logits, 0.7)
    assert noisy.dtype == torch.float64 and noisy.shape == logits.shape


@pytest.mark.parametrize("temperature,remasking", [(0.0, "low_confidence"), (1.0, "low_confidence"), (0.5, "random")])
def test_invariants_seen_by_the_step_callback(model, temperature, remasking):
    """The prompt never changes, commits stay in the block, nothing is re-masked, masks follow the schedule."""
    torch.manual_seed(0)
    steps, gen_length, block_length = 12, 24, 8
    L = PROMPT.shape[1]
    history = []
    out = generate(model, PROMPT, steps=steps, gen_length=gen_length, block_length=block_length,
                   temperature=temperature, remasking=remasking, step_callback=history.append)  # fmt: skip
    assert len(history) == steps
    previous = torch.cat([PROMPT, torch.full((2, gen_length), MASK)], dim=1)
    for info in history:
        canvas = info.canvas
        assert torch.equal(canvas[:, :L], PROMPT)
        start = L + info.block * block_length
        outside = torch.ones(canvas.shape[1], dtype=torch.bool)
        outside[start : start + block_length] = False
        assert not info.committed[:, outside].any(), "committed outside the current block"
        was_committed = previous != MASK
        assert torch.equal(canvas[was_committed], previous[was_committed]), "a committed token changed"
        assert torch.equal(info.committed, (previous == MASK) & (canvas != MASK))
        # linear schedule: 8 masks over 4 steps per block -> 2 per step
        masks_left = (canvas[:, start : start + block_length] == MASK).sum(1)
        assert masks_left.tolist() == [block_length - 2 * (info.step + 1)] * 2
        previous = canvas
    assert torch.equal(out, history[-1].canvas) and not (out == MASK).any()


def test_mask_ids_inside_the_prompt_are_never_committed(model):
    prompt = torch.tensor([[0, 3, MASK, 22, MASK, 41]])
    out = generate(model, prompt, steps=8, gen_length=8, block_length=8)
    assert torch.equal(out[:, :6], prompt) and not (out[:, 6:] == MASK).any()


def test_left_padded_batch_equals_each_prompt_alone(model):
    prompts = [[0, 3, 17, 22, 9, 41, 13], [0, 3, 30], [0, 44, 12, 8, 19]]
    length = max(map(len, prompts))
    batch = torch.tensor([[EOS] * (length - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
    for cfg in (0.0, 1.0):
        kwargs = dict(steps=16, gen_length=16, block_length=8, cfg_scale=cfg)
        out = generate(model, batch, mask, **kwargs)
        for row, p in enumerate(prompts):
            alone = generate(model, torch.tensor([p]), **kwargs)
            assert torch.equal(out[row, length:], alone[0, len(p) :]), (
                f"row {row} (cfg {cfg}) differs from its solo run"
            )


def test_eos_options_semantics_at_any_temperature(model):
    """logits_eos_inf: EOS never appears. confidence_eos_eot_inf: EOS/EoT are committed only after the rest."""
    biased = tiny_model(0, init_fn="normal", init_std=0.5)
    with torch.no_grad():  # make EOS/EoT frequent proposals so both options matter
        biased.model.transformer.ff_out.weight[[EOS, EOT]] *= 2.0
    for temperature in (0.0, 1.0):
        torch.manual_seed(1)
        out = generate(biased, PROMPT, steps=16, gen_length=16, block_length=16, temperature=temperature,
                       logits_eos_inf=True)  # fmt: skip
        assert not (out[:, PROMPT.shape[1] :] == EOS).any()
        torch.manual_seed(1)
        history = []
        generate(biased, PROMPT, steps=16, gen_length=16, block_length=16, temperature=temperature,
                 confidence_eos_eot_inf=True, step_callback=history.append)  # fmt: skip
        special_seen = False
        for info in history:
            eligible = info.confidence > -torch.inf
            special = (info.proposals == EOS) | (info.proposals == EOT)
            committed_special = info.committed & special
            special_seen |= bool(committed_special.any())
            for j in range(PROMPT.shape[0]):
                if committed_special[j].any():  # then every ordinary proposal of the row was committed too
                    assert not (eligible[j] & ~special[j] & ~info.committed[j]).any()
                assert (info.confidence[j][eligible[j] & special[j]] == 0).all()
        assert special_seen, "degenerate test: EOS/EoT were never proposed"


def test_ids_default_to_the_model_config():
    model = tiny_model(1, mask_token_id=40, eos_token_id=41, pad_token_id=41, eot_token_id=42)
    out = generate(model, torch.tensor([[0, 3, 7]]), steps=4, gen_length=4, block_length=4, logits_eos_inf=True)
    assert not (out == 40).any() and not (out == 41).any()


def test_threshold_above_one_equals_one_token_per_step(model):
    kwargs = dict(gen_length=16, block_length=8)
    default = generate(model, PROMPT, steps=16, **kwargs)
    stats = GenerationStats()
    assert torch.equal(generate(model, PROMPT, threshold=1.01, stats=stats, **kwargs), default)
    assert stats.nfe == 16 and stats.committed_per_step == [2] * 16
    assert torch.equal(generate(model, PROMPT, factor=1e-9, **kwargs), default)  # f -> 0 commits exactly one


def test_threshold_decodes_in_fewer_forwards(model):
    stats = GenerationStats()
    out = generate(model, PROMPT, gen_length=16, block_length=8, threshold=0.3, stats=stats)
    assert not (out == MASK).any() and stats.nfe < 16 and sum(stats.committed_per_step) == 2 * 16


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(gen_length=10, block_length=4), "multiple of block_length"),
        (dict(gen_length=16, block_length=8, steps=5), "multiple of the number of blocks"),
        (dict(steps=0), "positive multiple"),
        (dict(remasking="top_k"), "low_confidence, random"),
        (dict(gen_length=200, block_length=200, steps=200), "max_sequence_length"),
        (dict(temperature=-1.0), "temperature"),
        (dict(cfg_scale=-0.5), "cfg_scale"),
        (dict(threshold=0.9, factor=1.0), "exclusive"),
        (dict(threshold=0.9, remasking="random"), "low_confidence"),
        (dict(cache="kv"), "cache"),
    ],
)
def test_bad_arguments_raise_value_error(model, kwargs, message):
    args = dict(steps=8, gen_length=8, block_length=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        generate(model, PROMPT, **args)


def test_bad_prompts_raise_value_error(model):
    with pytest.raises(ValueError, match="unsqueeze"):
        generate(model, PROMPT[0], steps=4, gen_length=4, block_length=4)
    mask = torch.ones_like(PROMPT)
    mask[:, 0] = 0
    padded = PROMPT.clone()
    padded[:, 0] = MASK
    with pytest.raises(ValueError, match="padding id equals the mask id"):
        generate(model, padded, mask, steps=4, gen_length=4, block_length=4)
    with pytest.raises(ValueError, match="must match"):
        generate(model, PROMPT, mask[:, 1:], steps=4, gen_length=4, block_length=4)


# ----------------------------------------------------------------------------- fast options


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("cfg", [0.0, 1.0])
def test_cache_refreshed_every_step_equals_no_cache(model, cache, cfg):
    kwargs = dict(steps=16, gen_length=16, block_length=8, cfg_scale=cfg)
    stats = GenerationStats()
    strategy = {"prefix": PrefixCache, "dual": DualCache}[cache](refresh_every=1)
    out = generate(model, PROMPT, cache=strategy, stats=stats, **kwargs)
    assert torch.equal(out, generate(model, PROMPT, **kwargs))
    assert stats.nfe == stats.nfe_refresh == 16


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
@pytest.mark.parametrize("threshold", [None, 0.5])
def test_left_padded_batch_equals_each_prompt_alone_with_fast_options(model, cache, threshold):
    prompts = [[0, 3, 17, 22, 9, 41, 13], [0, 3, 30], [0, 44, 12, 8, 19]]
    length = max(map(len, prompts))
    batch = torch.tensor([[EOS] * (length - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
    kwargs = dict(steps=16, gen_length=16, block_length=8, cache=cache, threshold=threshold)
    out = generate(model, batch, mask, **kwargs)
    assert not (out == MASK).any()
    for row, p in enumerate(prompts):
        alone = generate(model, torch.tensor([p]), **kwargs)
        torch.testing.assert_close(out[row, length:], alone[0, len(p) :], msg=f"row {row} differs from its solo run")


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_steps_count_and_commit_everything(model, cache):
    stats = GenerationStats()
    out = generate(model, PROMPT, steps=16, gen_length=16, block_length=8, cache=cache, stats=stats)
    assert not (out == MASK).any() and torch.equal(out[:, :6], PROMPT)
    assert (stats.nfe, stats.nfe_refresh, stats.nfe_block) == (16, 2, 14)
    assert set(stats.forward_time_s) == {"refresh", "block"}


class EosBiased(torch.nn.Module):
    """Wraps a model and raises the EOS logit, so that greedy answers end early."""

    def __init__(self, model, bias):
        super().__init__()
        self.inner, self.bias, self.config = model, bias, model.config

    def forward(self, input_ids, **kwargs):
        out = self.inner(input_ids, **kwargs)
        out.logits[..., EOS] += self.bias
        return out


def test_early_stop_fills_eos_and_skips_forwards(model):
    """A model that proposes EOS everywhere stops after its first forward, with the same canvas."""
    eos_model = EosBiased(model, 100.0)
    full = generate(eos_model, PROMPT, steps=16, gen_length=16, block_length=4)
    assert (full[:, 6:] == EOS).all()
    stats = GenerationStats()
    stopped = generate(eos_model, PROMPT, steps=16, gen_length=16, block_length=4, early_stop=True, stats=stats)
    assert torch.equal(stopped, full)
    assert stats.nfe == 1 and stats.rows_early_stopped == 2


def test_factor_rule_commits_prefix_of_passing_ranks():
    from generate import parallel_commit_count

    c = torch.tensor([[0.99, 0.9, 0.8, -torch.inf], [0.5, 0.4, -torch.inf, -torch.inf], [0.99, 0.95, 0.9, 0.6]])
    # rank n passes while (n + 1)(1 - c(n)) < f; f = 1: ranks 1 (always), 2: 3*0.1=0.3 ok, 3: 4*0.2=0.8 ok
    assert parallel_commit_count(c, None, 1.0).tolist() == [3, 1, 3]
    # row 3 first fails at its last rank (5 * 0.4 = 2 >= 1): that rank is not committed (the prior
    # implementation committed all ranks in this case)
    assert parallel_commit_count(c[2:], None, 1.0).tolist() == [3]
    assert parallel_commit_count(c, 0.85, None).tolist() == [2, 1, 3]


# ----------------------------------------------------------------------------- the reference random stream


@torch.no_grad()
def previous_reference_generate(model, prompt, attention_mask, steps, gen_length, block_length, temperature,
                                cfg_scale, remasking, logits_eos_inf=False, confidence_eos_eot_inf=False):  # fmt: skip
    """The default path as it was before the memory work, transcribed literally: full-canvas logits,
    fp64 Gumbel noise over the whole (B, T, V) tensor, random-remasking draws over the whole canvas."""

    def old_gumbel(logits, temperature):
        if temperature == 0:
            return logits
        logits = logits.to(torch.float64)
        noise = torch.rand_like(logits, dtype=torch.float64)
        return logits.exp() / (-torch.log(noise)) ** temperature

    B, L = prompt.shape
    x = torch.full((B, L + gen_length), MASK, dtype=torch.long)
    x[:, :L] = prompt
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, gen_length)], dim=-1)
        if cfg_scale > 0:
            attention_mask = torch.cat([attention_mask, attention_mask])
    prompt_index = x != MASK
    num_blocks = gen_length // block_length
    spb = steps // num_blocks
    for block in range(num_blocks):
        start, end = L + block * block_length, L + (block + 1) * block_length
        schedule = get_num_transfer_tokens(x[:, start:end] == MASK, spb)
        for step in range(spb):
            if cfg_scale > 0:
                inputs = torch.cat([x, torch.where(prompt_index, MASK, x)])
                cond, uncond = model(inputs, attention_mask=attention_mask).logits.chunk(2)
                full_logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                full_logits = model(x, attention_mask=attention_mask).logits
            if logits_eos_inf:
                full_logits[..., EOS] = -torch.inf
            block_logits = full_logits[:, start:end]
            noisy = old_gumbel(full_logits, temperature)[:, start:end]
            noisy = noisy.index_fill(-1, torch.tensor([MASK]), -torch.inf)
            x0 = noisy.argmax(dim=-1)
            if confidence_eos_eot_inf:
                block_logits = block_logits.clone()
                block_logits[..., [EOS, EOT]] = -torch.inf
            if remasking == "low_confidence":
                confidence = token_confidence(block_logits, x0)
            else:
                confidence = torch.rand(x.shape)[:, start:end]
            confidence = torch.where(x[:, start:end] == MASK, confidence, -torch.inf)
            commit = commit_top_k(confidence, schedule[:, step])
            x[:, start:end][commit] = x0[commit]
    return x


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("cfg,padded,eos_options", [(0.0, False, False), (1.5, True, False), (0.0, True, True)])
def test_default_path_keeps_the_previous_random_stream(model, temperature, remasking, cfg, padded, eos_options):
    """Same seed, same tokens (and the same generator state after) as the full-canvas implementation."""
    prompt, mask = PROMPT, None
    if padded:
        prompt = torch.tensor([[EOS, EOS, 0, 3, 17, 22], [0, 3, 30, 31, 12, 8]])
        mask = (torch.arange(6) >= torch.tensor([[2], [0]])).long()
    kwargs = dict(steps=12, gen_length=24, block_length=8, temperature=temperature, cfg_scale=cfg,
                  remasking=remasking, logits_eos_inf=eos_options, confidence_eos_eot_inf=eos_options)  # fmt: skip
    torch.manual_seed(11)
    expected = previous_reference_generate(model, prompt, mask, **kwargs)
    after_expected = torch.rand(4)
    torch.manual_seed(11)
    out = generate(model, prompt, mask, **kwargs)
    assert torch.equal(out, expected)
    assert torch.equal(torch.rand(4), after_expected), "the generator state differs after the run"
    if temperature > 0:  # the test is not vacuous: another seed gives other tokens
        torch.manual_seed(12)
        assert not torch.equal(generate(model, prompt, mask, **kwargs), expected)


def test_embedded_model_keeps_the_previous_random_stream():
    """The same on the embedded instruct model (vocabulary 512) with a chat prompt, at T = 0.8."""
    from conftest import chat_model_path, require_checkpoint

    from genjo.loading import load_model

    model, tokenizer = load_model(require_checkpoint(chat_model_path()), device="cpu")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Sort: 7 3 9 1 4"}], add_generation_prompt=True,
                                         tokenize=False)  # fmt: skip
    prompt = torch.tensor([tokenizer(text)["input_ids"]])
    for remasking in ("low_confidence", "random"):
        kwargs = dict(steps=16, gen_length=32, block_length=16, temperature=0.8, cfg_scale=0.0, remasking=remasking)
        torch.manual_seed(5)
        expected = previous_reference_generate(model, prompt, None, **kwargs)
        torch.manual_seed(5)
        assert torch.equal(generate(model, prompt, **kwargs), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "shape,start,end", [((2, 13, 7), 6, 10), ((3, 40, 5), 30, 34), ((2, 9), 0, 9), ((1, 5, 3), 0, 2)]
)
def test_rand_columns_draws_the_numbers_of_one_whole_draw(dtype, shape, start, end):
    """CPU's generator gives its stream in order whatever the split of the draws: the block's numbers
    equal those of one canvas-wide draw, and the generator ends in the same state."""
    torch.manual_seed(3)
    whole = torch.rand(shape, dtype=dtype)[:, start:end]
    after_whole = torch.rand(3)
    torch.manual_seed(3)
    part = rand_columns(shape, start, end, dtype)
    assert part.shape == whole.shape and part.dtype == dtype
    assert torch.equal(part, whole) and torch.equal(torch.rand(3), after_whole)


def test_gumbel_noise_in_place_equals_the_formula():
    logits = torch.randn(2, 3, 7)
    noise = torch.rand(2, 3, 7, dtype=torch.float64)
    expected = logits.double().exp() / (-torch.log(noise)) ** 0.8
    assert torch.equal(add_gumbel_noise(logits, 0.8, noise.clone()), expected)
