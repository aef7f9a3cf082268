"""The context-extension experiment (genjo/niah_experiment.py): its training needles, SFT rows, packed
post-training rows, bad settings, the results table and heat map, and a miniature end-to-end run."""

import json

import pytest
import torch

from genjo import niah
from genjo.chat_format import user_turn_ids
from genjo.niah_experiment import (
    ExperimentArgs,
    check_experiment_args,
    packed_batches,
    plot,
    results_table,
    run,
    sft_table,
)


@pytest.mark.parametrize("length", [64, 120, 300])
def test_make_needle_never_exceeds_its_length(tiny_tokenizer, length):
    for k in range(12):
        needle = niah.make_needle(tiny_tokenizer, length, depth=k / 11, seed=k)
        assert len(user_turn_ids(tiny_tokenizer, needle.text)) <= length


def test_training_needles_hold_their_answer_and_differ_from_the_test_haystacks(tiny_tokenizer):
    needles = niah.training_needles(tiny_tokenizer, 12, seed=0, min_length=64, max_length=120)
    assert needles == niah.training_needles(tiny_tokenizer, 12, seed=0, min_length=64, max_length=120)
    for needle in needles:
        assert 64 <= needle.length <= 120 and 0.0 <= needle.depth < 1.0
        assert len(user_turn_ids(tiny_tokenizer, needle.question)) <= needle.length
        # The answer is recoverable from the text: stated once in the needle sentence, asked about at the end.
        sentence = niah.NEEDLE.format(name=needle.name, number=needle.number)
        assert needle.text.count(sentence) == 1 and needle.text.count("magic number") == 2
        assert needle.text.endswith("\n\n" + niah.QUESTION.format(name=needle.name))
        assert len(needle.answer) == 4 and needle.answer.isdigit()
    test_texts = {niah.make_needle(tiny_tokenizer, n.length, n.depth, k).text for k in range(4) for n in needles}
    assert not test_texts & {n.text for n in needles}
    with pytest.raises(ValueError, match="min_length"):
        niah.training_needles(tiny_tokenizer, 2, seed=0, min_length=32, max_length=120)


def test_sft_rows_put_the_number_right_after_the_prompt(tiny_tokenizer):
    needles = niah.training_needles(tiny_tokenizer, 6, seed=1, min_length=64, max_length=120)
    rows, prompt_lengths = sft_table(tiny_tokenizer, needles, 128)
    assert rows.shape == (6, 128) and rows.dtype == torch.int64 and prompt_lengths.shape == (6,)
    eot = tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    for row, prompt_length, needle in zip(rows.tolist(), prompt_lengths.tolist(), needles):
        assert row[:prompt_length] == user_turn_ids(tiny_tokenizer, needle.text)
        answer = tiny_tokenizer(needle.number, add_special_tokens=False)["input_ids"]
        end = prompt_length + len(answer)
        assert row[prompt_length:end] == answer and row[end] == eot
        assert set(row[end + 1 :]) <= {tiny_tokenizer.eos_token_id}
    with pytest.raises(ValueError, match="does not fit"):
        sft_table(tiny_tokenizer, needles, 80)


def test_post_training_rows_pack_other_needles_before_the_one_asked(tiny_tokenizer):
    needles = niah.training_needles(tiny_tokenizer, 6, seed=2, min_length=64, max_length=100)
    batches = {p: packed_batches(tiny_tokenizer, needles, 256, 3, p, seed=0) for p in ("document", "eod", "concat")}
    eos, eot = tiny_tokenizer.eos_token_id, tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    ids, prompt_lengths, bias = batches["document"](5)
    assert ids.shape == (3, 256) and ids.dtype == torch.int64 and bias.shape == (3, 1, 256, 256)
    assert torch.equal(ids, batches["eod"](5)[0]) and len(batches["eod"](5)) == 2  # the same draws, no mask
    assert not (batches["concat"](5)[0][:, :-8] == eos).all(dim=1).any()
    for row, prompt_length, mask in zip(ids.tolist(), prompt_lengths.tolist(), bias):
        # The row ends with the asked needle's number and <|eot_id|>, the only columns after the prompt.
        answer = tiny_tokenizer.decode(row[prompt_length:-1])
        assert row[-1] == eot and answer.isdigit() and len(answer) == 4
        asked = tiny_tokenizer.decode(row[:prompt_length]).rsplit("<|startoftext|>", 1)[1]
        assert f"is {answer}." in asked and row.count(tiny_tokenizer.bos_token_id) >= 2  # other needles before
        start = prompt_length - len(tiny_tokenizer(asked, add_special_tokens=False)["input_ids"]) - 1
        assert mask[0, -1, start:].all() and not mask[0, -1, : start - 1].any()  # sees its own document only
    with pytest.raises(ValueError, match="do not fit"):
        packed_batches(tiny_tokenizer, needles, 64, 3, "eod", seed=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(train_length=64), "at least 64 prompt tokens"),
        (dict(multiples=(0, 2)), "multiples"),
        (dict(d_model=60, n_heads=4), "head dimension"),
        (dict(packings=("document", "varlen")), "packings"),
        (dict(gen_length=4), "gen_length"),
    ],
)
def test_bad_experiment_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_experiment_args(ExperimentArgs(**overrides))


def fake_results(multiples=(1, 2)) -> dict:
    record = lambda m, acc, factor: dict(multiple=m, length=128 * m, factor=factor, accuracy=acc)  # noqa: E731
    return dict(args=dict(train_length=128, multiples=list(multiples)),
                methods={"none": [record(1, 1.0, 1.0), record(2, 0.25, 1.0)],
                         "ntk": [record(1, 1.0, 1.0), record(2, 0.5, 2.0)]})  # fmt: skip


def test_results_table_and_heat_map(tmp_path):
    table = results_table(fake_results())
    assert table.splitlines()[0] == "| method | 1x (128) | 2x (256) |"
    assert "| none | 100% (x1) | 25% (x1) |" in table and "| ntk | 100% (x1) | 50% (x2) |" in table
    plot(fake_results(), str(tmp_path / "map.png"))
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_miniature_run_trains_scales_post_trains_and_tests(tmp_path, one_thread):
    args = ExperimentArgs(d_model=16, n_layers=1, n_heads=1, mlp_hidden_size=32, steps=2, batch_size=4, pool=8,
                          post_steps=1, post_batch_size=2, post_pool=4, multiples=(1, 2), packings=("document",),
                          depths=(0.0,), samples=1)  # fmt: skip
    results = run(args, str(tmp_path))
    assert list(results["methods"]) == ["none", "ntk", "diffusion-aware", "diffusion-aware + post-training (document)"]
    assert results["factors"] == {"ntk": [1.0, 2.0], "diffusion-aware": [1.0, 1.0]}
    none, ntk, _, post = results["methods"].values()
    assert [r["length"] for r in none] == [128, 256] and [r["factor"] for r in ntk] == [1.0, 2.0]
    assert [r["factor"] for r in post] == [1.0, 1.0]  # the one base of the post-trained model
    post_curve = (tmp_path / "post-document" / "learning_curve.jsonl").read_text().splitlines()
    assert json.loads(post_curve[-1])["stage"] == "sft"
    assert json.loads((tmp_path / "results.json").read_text())["methods"].keys() == results["methods"].keys()
    curve = [json.loads(line) for line in (tmp_path / "base" / "learning_curve.jsonl").read_text().splitlines()]
    assert all("accuracy" not in record for record in curve)  # no tiny-world accuracy on the needle data
    config = json.loads((tmp_path / "post-document" / "final" / "config.json").read_text())
    assert config["max_sequence_length"] == 256 and config["rope_extension"]["train_length"] == 128
