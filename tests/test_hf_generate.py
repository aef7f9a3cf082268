"""GenjoModelLM.generate, the transformers entry point: the one sampler behind the transformers spelling."""

import logging
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import require_checkpoint, run_outside_the_repo
from transformers import TextStreamer

from genjo import generate, load_model, resolve_sampler_settings
from genjo.chat_format import question_batch
from genjo.loading import DEFAULT_MODEL
from genjo.modeling_genjo import GENJO_MISSING

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "Reverse: alpha bravo charlie"


@pytest.fixture(scope="module")
def instruct(one_thread):
    return load_model(require_checkpoint(DEFAULT_MODEL), device="cpu")


@pytest.fixture(scope="module")
def inputs(instruct):
    """What a transformers user passes: the tokenizer's input_ids and attention_mask of one chat prompt."""
    _, tokenizer = instruct
    messages = [dict(role="user", content=QUESTION)]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)


class RecordingStreamer:
    """A transformers-style streamer that keeps what it is sent."""

    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, tokens):
        assert self.ended == 0, "put after end"
        self.puts.append(tokens)

    def end(self):
        self.ended += 1


def test_same_tokens_as_the_sampler(instruct):
    model, tokenizer = instruct
    prompt, mask = question_batch(tokenizer, [QUESTION, "Sort: 7 3 9 1 4"])  # left-padded batch
    for settings in (dict(steps=16, block_length=16), dict(steps=32, block_length=8, cache="dual", threshold=0.9)):
        expected = generate(model, prompt, mask, gen_length=32, **settings)
        assert torch.equal(model.generate(prompt, mask, max_new_tokens=32, **settings), expected), settings
        assert torch.equal(model.generate(input_ids=prompt, attention_mask=mask, gen_length=32, **settings), expected)


def test_unset_settings_take_the_checkpoints_sampler_defaults(instruct, inputs):
    model, tokenizer = instruct
    defaults = model.config.sampler_defaults
    assert defaults["gen_length"] == 32 and defaults["block_length"] == 32
    out = model.generate(**inputs)
    expected = generate(model, inputs["input_ids"], inputs["attention_mask"], **resolve_sampler_settings({}, model))
    assert torch.equal(out, expected)
    assert out.shape == (1, inputs["input_ids"].shape[1] + defaults["gen_length"])
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer == "charlie bravo alpha"


def test_max_new_tokens_is_the_answer_length_and_new_tokens_only_drops_the_prompt(instruct, inputs):
    model, _ = instruct
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    canvas = model.generate(ids, mask, max_new_tokens=64)
    assert canvas.shape == (1, ids.shape[1] + 64) and torch.equal(canvas[:, : ids.shape[1]], ids)
    expected = generate(model, ids, mask, **resolve_sampler_settings(dict(gen_length=64), model))
    assert torch.equal(canvas, expected)
    new = model.generate(ids, mask, max_new_tokens=64, return_new_tokens_only=True)
    assert torch.equal(new, canvas[:, ids.shape[1] :])


def test_bad_lengths_and_autoregressive_options_are_clear_errors(instruct, inputs):
    model, _ = instruct
    with pytest.raises(ValueError, match=r"max_new_tokens \(48\) must be a multiple of block_length \(32"):
        model.generate(**inputs, max_new_tokens=48)
    with pytest.raises(ValueError, match=r"steps \(32\) must be .* blocks .*steps.* sampler_defaults"):
        model.generate(**inputs, max_new_tokens=96)  # 3 blocks, and steps came from the checkpoint
    with pytest.raises(ValueError, match="do_sample .* temperature > 0"):
        model.generate(**inputs, do_sample=True)
    with pytest.raises(ValueError, match="max_length .* max_new_tokens"):
        model.generate(**inputs, max_length=64)
    with pytest.raises(ValueError, match="pass one of them"):
        model.generate(**inputs, max_new_tokens=32, gen_length=64)
    with pytest.raises(ValueError, match="input_ids"):
        model.generate(max_new_tokens=32)


def test_streamer_gets_the_prompt_then_the_final_tokens_left_to_right(instruct, inputs):
    model, _ = instruct
    streamer = RecordingStreamer()
    canvas = model.generate(**inputs, max_new_tokens=32, block_length=8, steps=32, streamer=streamer)
    prompt, *answer = streamer.puts
    assert torch.equal(prompt, inputs["input_ids"]) and streamer.ended == 1
    assert len(answer) > 1 and all(part.dim() == 2 and part.shape[1] > 0 for part in answer)  # streamed in pieces
    assert torch.equal(torch.cat(answer, dim=1), canvas[:, inputs["input_ids"].shape[1] :])


def test_early_stop_and_a_batch_stream_every_column_once(instruct):
    model, tokenizer = instruct
    prompt, mask = question_batch(tokenizer, [QUESTION, "Sort: 7 3 9 1 4"])
    streamer = RecordingStreamer()
    canvas = model.generate(prompt, mask, max_new_tokens=64, block_length=16, steps=64, early_stop=True,
                            streamer=streamer)  # fmt: skip
    assert torch.equal(torch.cat(streamer.puts[1:], dim=1), canvas[:, prompt.shape[1] :])


def test_transformers_text_streamer_prints_the_answer(instruct, inputs, capsys):
    model, tokenizer = instruct
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    new = model.generate(**inputs, streamer=streamer, return_new_tokens_only=True)
    assert capsys.readouterr().out.strip() == tokenizer.decode(new[0], skip_special_tokens=True) != ""


def test_step_callback_sees_every_step(instruct, inputs):
    model, _ = instruct
    infos = []
    streamer = RecordingStreamer()
    canvas = model.generate(**inputs, steps=16, step_callback=infos.append, streamer=streamer)
    assert [(i.block, i.step) for i in infos] == [(0, s) for s in range(16)]
    assert torch.equal(infos[-1].canvas, canvas) and infos[0].prompt_length == inputs["input_ids"].shape[1]


def test_generate_leaves_save_and_load_as_they_were(instruct, inputs, tmp_path, caplog):
    """No generation_config appears (the class does not claim transformers' GenerationMixin), nothing is logged."""
    model, _ = instruct
    assert not model.can_generate() and getattr(model, "generation_config", None) is None
    with caplog.at_level(logging.WARNING):
        model.save_pretrained(tmp_path)
        reloaded = type(model).from_pretrained(tmp_path).eval()
        out = reloaded.generate(**inputs)
    assert not (tmp_path / "generation_config.json").exists()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert torch.equal(out, model.generate(**inputs))


def remote_code_script(setup: str, check: str) -> str:
    """Load the embedded model through AutoModel's remote code in a fresh interpreter, then run ``check``."""
    path = require_checkpoint(DEFAULT_MODEL)
    return textwrap.dedent(f"""
        import sys
        {setup}
        import torch
        from transformers import AutoModel, AutoTokenizer
        model = AutoModel.from_pretrained({path!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules")
        tokenizer = AutoTokenizer.from_pretrained({path!r})
        inputs = tokenizer.apply_chat_template([dict(role="user", content={QUESTION!r})], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        assert model(inputs["input_ids"]).logits.shape[:2] == inputs["input_ids"].shape  # the forward needs no genjo
    """) + textwrap.dedent(check)  # fmt: skip


def test_remote_code_generates_with_genjo_installed(tmp_path):
    check = """
        import genjo
        new = model.generate(**inputs, return_new_tokens_only=True)
        settings = genjo.resolve_sampler_settings({}, model)
        expected = genjo.generate(model, inputs["input_ids"], inputs["attention_mask"], **settings)
        assert torch.equal(new, expected[:, inputs["input_ids"].shape[1]:])
        assert tokenizer.decode(new[0], skip_special_tokens=True) == "charlie bravo alpha"
        print("OK")
    """
    run_outside_the_repo(remote_code_script(f"sys.path.insert(0, {str(ROOT)!r})  # this checkout's genjo", check),
                         tmp_path)  # fmt: skip


def test_remote_code_without_genjo_says_how_to_install_it(tmp_path):
    check = f"""
        try:
            model.generate(**inputs)
        except ImportError as error:
            assert str(error) == {GENJO_MISSING!r}, error
            print("OK")
    """
    run_outside_the_repo(remote_code_script("sys.modules['genjo'] = None  # as if it were not installed", check),
                         tmp_path)  # fmt: skip
    assert "pip install -e ." in GENJO_MISSING
