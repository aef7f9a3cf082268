"""The shipped Genjo-tiny checkpoints: plain-transformers loading, consistency, exactness of the fast options."""

import os
import textwrap

import pytest
import torch
from conftest import require_checkpoint, run_outside_the_repo

import genjo
from generate import GenerationStats, generate
from genjo import refresh_remote_code, tinyworld
from genjo.chat_format import question_batch
from genjo.loading import DEFAULT_BASE_MODEL, DEFAULT_MODEL, load_model
from genjo.tokenizer import special_token_ids


@pytest.fixture(scope="module")
def instruct():
    return load_model(require_checkpoint(DEFAULT_MODEL), device="cpu")


@pytest.mark.parametrize("path", [DEFAULT_BASE_MODEL, DEFAULT_MODEL])
def test_checkpoint_is_small_and_consistent_with_its_tokenizer(path):
    require_checkpoint(path)
    model, tokenizer = load_model(path, device="cpu")
    ids = special_token_ids(tokenizer)
    config = model.config
    assert (config.mask_token_id, config.eos_token_id, config.eot_token_id) == (
        ids["mask_token_id"],
        ids["eos_token_id"],
        ids["eot_token_id"],
    )
    assert config.embedding_size >= len(tokenizer)
    assert os.path.getsize(os.path.join(path, "model.safetensors")) < 10 * 2**20
    # The remote code next to the weights is a copy of the package's source: it must be today's.
    package = os.path.dirname(genjo.__file__)
    for name in ("modeling_genjo.py", "configuration_genjo.py"):
        with open(os.path.join(path, name)) as shipped, open(os.path.join(package, name)) as source:
            assert shipped.read() == source.read(), f"{path}/{name} is stale: run `{refresh_remote_code.COMMAND}`"


def test_loads_with_only_transformers(tmp_path):
    """AutoModel / AutoTokenizer with trust_remote_code, in an interpreter without the project on sys.path."""
    path = require_checkpoint(DEFAULT_MODEL)
    script = textwrap.dedent(f"""
        import torch
        from transformers import AutoModel, AutoTokenizer
        model = AutoModel.from_pretrained({path!r}, trust_remote_code=True).eval()
        tokenizer = AutoTokenizer.from_pretrained({path!r})
        text = tokenizer.apply_chat_template([dict(role="user", content="Sort: 3 1 2")], add_generation_prompt=True,
                                             tokenize=False)
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        assert model(ids).logits.shape[:2] == ids.shape
        assert type(model).__module__.startswith("transformers_modules")
        print("OK")
    """)
    run_outside_the_repo(script, tmp_path)


def test_early_stop_never_changes_greedy_answers(instruct):
    """Early exit on the embedded model's prompts: same canvas at temperature 0, fewer forwards."""
    model, tokenizer = instruct
    problems = tinyworld.sample_problems(16, seed=31, split="heldout")
    prompt, mask = question_batch(tokenizer, [p.question for p in problems])
    for kwargs in (dict(steps=64), dict(threshold=0.9, cache="dual")):
        full = generate(model, prompt, mask, gen_length=64, block_length=16, **kwargs)
        stats = GenerationStats()
        stopped = generate(model, prompt, mask, gen_length=64, block_length=16, early_stop=True, stats=stats, **kwargs)
        assert torch.equal(stopped, full)
        assert stats.rows_early_stopped > 0


def test_threshold_above_one_is_one_token_per_step_on_the_embedded_model(instruct):
    model, tokenizer = instruct
    prompt, mask = question_batch(tokenizer, ["Reverse: alpha bravo charlie", "What is 12 + 30?"])
    default = generate(model, prompt, mask, steps=32, gen_length=32, block_length=32)
    assert torch.equal(generate(model, prompt, mask, gen_length=32, block_length=32, threshold=1.01), default)


def test_instruct_model_meets_the_quality_bar_on_40_fixed_problems(instruct):
    """10 problems per family, at the checkpoint's own sampler settings and temperature 0.

    Sorting, reversal and addition problems are held out of all training data. Capitals are facts: the
    bar is checked on countries taught in chat; held-out countries (only stated in pre-training text)
    measure transfer and are reported in README.md, not asserted.
    """
    from genjo.evaluation import family_accuracy

    model, tokenizer = instruct
    held_out = tinyworld.sample_problems(30, seed=2024, families=("sorting", "reversal", "addition"), split="heldout")
    taught = tinyworld.sample_problems(10, seed=2024, families=("capitals",), split="train")
    accuracy = family_accuracy(model, tokenizer, held_out + taught, **model.config.sampler_defaults)
    print(accuracy)
    bars = {"capitals": 0.95, "sorting": 0.9, "reversal": 0.9, "addition": 0.6}
    assert all(accuracy[family] >= bar for family, bar in bars.items()), accuracy
