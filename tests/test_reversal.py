"""The reversal experiment: the AR twin's causal mask, its loss and decoding, the one-directional facts,
both models trained by genjo.train, and eval_reverse.py on a small pairs file."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import EOS, tiny_model

import eval_reverse
from genjo import GenjoConfig, GenjoModelLM
from genjo.reversal import (
    FORWARD_TEMPLATES,
    REVERSE_PROMPT,
    ExperimentArgs,
    Fact,
    build_experiment_tokenizer,
    check_no_leak,
    fact_batches,
    greedy_decode,
    make_facts,
    questions,
    results_table,
    train_one,
    training_sentences,
)
from genjo.train import ar_loss


def test_causal_model_past_logits_ignore_future_tokens():
    ids = torch.randint(6, 60, (2, 10), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, 6] = (ids[:, 6] + 1 - 6) % 54 + 6  # another ordinary token at column 6
    causal = tiny_model(causal=True)
    with torch.no_grad():
        a, b = causal(ids).logits, causal(changed).logits
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)
    assert (a[:, 6:] - b[:, 6:]).abs().amax() > 1e-4
    bidirectional = tiny_model()  # same weights, no causal mask: every position sees column 6
    with torch.no_grad():
        assert (bidirectional(ids).logits[:, :6] - bidirectional(changed).logits[:, :6]).abs().amax() > 1e-4
    assert GenjoConfig().causal is False


def test_causal_flag_survives_save_and_load(tmp_path):
    tiny_model(causal=True).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["causal"] is True
    assert GenjoModelLM.from_pretrained(tmp_path).config.causal is True


def test_causal_model_with_left_padding_and_greedy_decode_match_the_unpadded_rows():
    model = tiny_model(causal=True)
    rows = [[7, 8, 9, 10, 11], [12, 13, 14]]
    prompt = torch.tensor([rows[0], [EOS, EOS] + rows[1]])
    mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])
    batched = greedy_decode(model, prompt, mask, max_new_tokens=4)
    assert batched.shape == (2, 9)
    for i, row in enumerate(rows):
        alone = greedy_decode(model, torch.tensor([row]), None, max_new_tokens=4)
        assert batched[i, 5:].tolist() == alone[0, len(row) :].tolist()
        x = torch.tensor([row])  # greedy = the argmax of the last position, one token at a time
        for _ in range(4):
            x = torch.cat([x, model(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert alone.tolist() == x.tolist()
    assert torch.isfinite(model(prompt, attention_mask=mask).logits).all()  # all-pad query rows stay finite


def test_ar_loss_is_next_token_cross_entropy_on_answer_tokens():
    model = tiny_model(causal=True)
    ids = torch.randint(6, 60, (2, 8), generator=torch.Generator().manual_seed(1))
    logits = model(ids).logits.float()
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(ar_loss(model, ids), expected)
    # prompts of 3 and 5 tokens: only tokens 3.. and 5.. are predicted
    targets = torch.cat([logits[0, 2:-1], logits[1, 4:-1]]), torch.cat([ids[0, 3:], ids[1, 5:]])
    torch.testing.assert_close(ar_loss(model, ids, torch.tensor([3, 5])), F.cross_entropy(*targets))


def test_reverse_questions_of_test_facts_never_appear_in_training():
    facts = make_facts(40, seed=3)
    sentences = training_sentences(facts)
    test = [f for f in facts if not f.paired]
    assert len(test) == 20 and len({f.x for f in facts}) == len({f.y for f in facts}) == 40  # one-to-one
    for prompt, _ in questions(facts, "reverse"):
        assert not any(prompt in s for s in sentences)
    for f in test:  # taught in every forward wording, always the name before the code word
        stated = [s for s in sentences if f.x in s]
        assert len(stated) == len(FORWARD_TEMPLATES) and f"Agent {f.x}'s code word is {f.y}." in stated
        assert all(s.index(f.x) < s.index(f.y) for s in stated)
    for f in facts:
        if f.paired:  # the reverse template is learned on the paired facts
            assert REVERSE_PROMPT.format(y=f.y) + f" {f.x}." in sentences
    check_no_leak(facts)
    leaky = facts + [Fact(test[0].x, test[0].y, paired=True)]  # a test fact also taught in reverse
    with pytest.raises(ValueError, match="is in the training data"):
        check_no_leak(leaky)
    assert make_facts(40, seed=3) == facts and make_facts(40, seed=4) != facts


def test_both_models_train_on_the_same_batches_with_the_same_size(tmp_path):
    args = ExperimentArgs(people=20, steps=20, batch_size=8, d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64)
    tokenizer = build_experiment_tokenizer(args.people)
    facts = make_facts(args.people, seed=0)
    batches = fact_batches(tokenizer, facts, args.batch_size, args.seq_len, seed=0)
    assert torch.equal(batches(5), batches(5)) and batches(5).shape == (8, args.seq_len)
    genjo = train_one(args, tokenizer, facts, "mdm", 0, str(tmp_path / "mdm"))
    twin = train_one(args, tokenizer, facts, "ar", 0, str(tmp_path / "ar"))
    assert (genjo.config.causal, twin.config.causal) == (False, True)
    assert sum(p.numel() for p in genjo.parameters()) == sum(p.numel() for p in twin.parameters())
    records = [{"seed": 0, "model": m, "forward": 0.5, "reverse": r} for m, r in (("Genjo", 0.25), ("AR twin", 0.0))]
    assert results_table(records).splitlines()[2] == "| 0 | 50.0 | 25.0 | 50.0 | 0.0 |"


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    pairs = [{"first": "alpha bravo charlie", "second": "charlie bravo alpha"},
             {"first": "delta echo golf hotel", "second": "hotel golf echo delta"}]  # fmt: skip
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def test_eval_reverse_on_a_small_pairs_file(pairs_file, tmp_path):
    # The embedded instruct model reverses word lists: both directions are the same task for it.
    out = tmp_path / "out.jsonl"
    argv = ["--data", str(pairs_file), "--prompt-format", "custom", "--forward-template", "Reverse: {text}",
            "--reverse-template", "Reverse: {text}", "--match", "exact", "--output", str(out)]  # fmt: skip
    results = eval_reverse.main(argv)
    assert {d: r["accuracy"] for d, r in results.items()} == {"ftb": 1.0, "btf": 1.0}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["type"], r["question"], r["output"]) for r in lines] == [
        ("ftb", "Reverse: alpha bravo charlie", "charlie bravo alpha"),
        ("ftb", "Reverse: delta echo golf hotel", "hotel golf echo delta"),
        ("btf", "Reverse: charlie bravo alpha", "alpha bravo charlie"),
        ("btf", "Reverse: hotel golf echo delta", "delta echo golf hotel"),
    ]


def test_eval_reverse_prompts_and_bad_input(pairs_file, tmp_path):
    pairs = eval_reverse.load_pairs(str(pairs_file))
    questions_, expected = eval_reverse.prompts_for(pairs, "btf", *eval_reverse.PROMPT_FORMATS["zh"])
    assert questions_[0] == "charlie bravo alpha的上一句是什么？ 直接输出句子即可。"
    assert expected[0] == "alpha bravo charlie"
    as_list = tmp_path / "pairs.json"
    as_list.write_text(json.dumps(pairs))
    assert eval_reverse.load_pairs(str(as_list)) == pairs
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"first": "a", "second": "b"}\n{"first": "a"}\n')
    with pytest.raises(ValueError, match=r"line 2: expected \{\"first\""):
        eval_reverse.load_pairs(str(bad))
    with pytest.raises(ValueError, match="must contain \\{text\\}"):
        eval_reverse.main(["--data", str(pairs_file), "--prompt-format", "custom"])
    with pytest.raises(ValueError, match="--limit must be a positive integer; got 0"):
        eval_reverse.main(["--data", str(pairs_file), "--limit", "0"])


def test_eval_reverse_reads_odd_lines_whole_and_refuses_empty_texts(tmp_path):
    """A pair whose text holds U+2028 / U+2029 / U+0085 is one line (before: split there and rejected); an empty
    first or second would be "contained" in every output and scored correct (before: accuracy 1.0)."""
    odd = tmp_path / "odd.jsonl"
    pair = {"first": "床前明月光\u2028", "second": "疑是\u2029地上霜\x85"}
    odd.write_text(json.dumps(pair, ensure_ascii=False) + "\r\n" + json.dumps({"first": "a", "second": "b"}) + "\n",
                   encoding="utf-8")  # fmt: skip
    assert eval_reverse.load_pairs(str(odd)) == [pair, {"first": "a", "second": "b"}]
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"first": "a", "second": "b"}\n{"first": "a", "second": "  "}\n')
    with pytest.raises(ValueError, match=r"empty.jsonl, line 2: 'second' is empty"):
        eval_reverse.load_pairs(str(empty))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"first": "caf\xe9", "second": "b"}\n')
    with pytest.raises(ValueError, match=r"latin1.jsonl, line 1: not UTF-8 text"):
        eval_reverse.load_pairs(str(latin1))
