"""Training on your own JSON-lines files: reading, packing, multi-turn SFT pairs, resume, data parallelism."""

import json
import os
import pickle
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genjo import GenjoModelLM, load_model
from genjo.tokenizer import build_tokenizer
from genjo.train import FileData, TrainArgs, enable_gradient_checkpointing, sft_loss, train
from genjo.train.files import ChatPairs, JsonlStream, PackedRows, conversation_pairs, is_held_out

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64, batch_size=8, lr=3e-3, warmup_steps=3,
            save_every=1000, resume=False, eval_rows=16)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def double(digits: list[str]) -> str:
    return " ".join(d + " " + d for d in digits)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """text.jsonl: plain documents; chat.jsonl: a task the tiny models never saw, 1 in 4 conversations 2-turn."""
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    with open(root / "text.jsonl", "w") as f:
        for _ in range(400):
            digits = [str(rng.randint(0, 9)) for _ in range(rng.randint(3, 6))]
            f.write(json.dumps({"text": f"Doubling {' '.join(digits)} gives {double(digits)}."}) + "\n")
    with open(root / "chat.jsonl", "w") as f:
        for _ in range(300):
            digits = [str(rng.randint(0, 9)) for _ in range(rng.randint(3, 5))]
            messages = [{"role": "user", "content": "Double: " + " ".join(digits)},
                        {"role": "assistant", "content": double(digits)}]  # fmt: skip
            if rng.random() < 0.25:
                messages += [{"role": "user", "content": "And reversed?"},
                             {"role": "assistant", "content": double(digits[::-1])}]  # fmt: skip
            f.write(json.dumps({"messages": messages}) + "\n")
    return root


def curve(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "learning_curve.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- reading


def test_rows_are_documents_joined_by_eos(files, tokenizer):
    stream = JsonlStream([str(files / "text.jsonl")], "text", loop=False)
    rows = PackedRows(stream, tokenizer, 16).rows(5)
    assert [len(r) for r in rows] == [16] * 5
    assert stream.line_no < 10 and stream.offset < (files / "text.jsonl").stat().st_size / 20  # read as needed
    texts = [json.loads(line)["text"] for line in (files / "text.jsonl").read_text().splitlines()[:10]]
    stream = sum((tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts), [])
    assert sum(rows, []) == stream[:80]


def test_multi_turn_conversation_gives_one_pair_per_assistant_turn(tokenizer):
    messages = [{"role": "user", "content": "Double: 1 2"}, {"role": "assistant", "content": "1 1 2 2"},
                {"role": "user", "content": "And 3?"}, {"role": "assistant", "content": "3 3"}]  # fmt: skip
    (p0, a0), (p1, a1) = conversation_pairs(tokenizer, messages)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert tokenizer.decode(a0) == "1 1 2 2<|eot_id|>" and a1[-1] == eot
    assert tokenizer.decode(p1) == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nDouble: 1 2<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n1 1 2 2<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd 3?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert p1[: len(p0) + len(a0)] == p0 + a0  # the second prompt continues the first pair
    with pytest.raises(ValueError, match="at least one assistant"):
        conversation_pairs(tokenizer, messages[:1])


def test_sft_pairs_read_spelled_special_tokens_as_text_as_inference_does(tokenizer):
    """Training sees a message's text exactly as chat.py, generate.py --input and the eval harness encode it."""
    from genjo.chat_format import encode_chat

    messages = [{"role": "user", "content": "Say <|eot_id|> or <|mdm_mask|>"},
                {"role": "assistant", "content": "<|mdm_mask|> <|eot_id|>"}]  # fmt: skip
    ((prompt, answer),) = conversation_pairs(tokenizer, messages)
    eot, mask = tokenizer.convert_tokens_to_ids("<|eot_id|>"), tokenizer.convert_tokens_to_ids("<|mdm_mask|>")
    assert prompt == encode_chat(tokenizer, messages[:1], add_generation_prompt=True)
    assert prompt + answer == encode_chat(tokenizer, messages, add_generation_prompt=False)
    assert mask not in prompt + answer and answer.count(eot) == 1 and answer[-1] == eot
    assert tokenizer.decode(answer) == "<|mdm_mask|> <|eot_id|><|eot_id|>"


def test_sft_turns_sample_one_pair_per_conversation_or_all(files, tokenizer):
    def count(turns: str) -> int:
        stream = JsonlStream([str(files / "chat.jsonl")], "messages", loop=False)
        return len(ChatPairs(stream, tokenizer, 160, turns).pairs(10_000))

    lines = (files / "chat.jsonl").read_text().splitlines()
    two_turn = sum(len(json.loads(line)["messages"]) == 4 for line in lines)
    assert count("sample") == len(lines) and count("all") == len(lines) + two_turn


def test_stream_resumes_exactly_from_a_saved_state(files, tokenizer, tmp_path):
    def reader():
        stream = JsonlStream([str(files / "chat.jsonl")], "messages", shuffle_buffer=50, seed=3)
        return ChatPairs(stream, tokenizer, 160, "sample", seed=3)

    a = reader()
    a.pairs(500)  # past the end of the file: the second epoch
    torch.save(a.state_dict(), tmp_path / "state.pt")
    b = reader()
    b.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert b.pairs(40) == a.pairs(40)


def test_held_out_lines_never_reach_training(files, tokenizer):
    args = TrainArgs(stage="sft", data=str(files / "chat.jsonl"), eval_fraction=0.1, eval_rows=1000, batch_size=8)
    data = FileData(args, tokenizer)
    prompts = lambda ids, lengths: {tuple(r[:n]) for r, n in zip(ids.tolist(), lengths.tolist())}  # noqa: E731
    held_out = set().union(*(prompts(ids, n) for ids, n, _ in data.eval_batches()))
    trained = set().union(*(prompts(*data.batch(step)) for step in range(60)))
    assert 10 < len(held_out) < 60 and not held_out & trained
    lines = (files / "chat.jsonl").read_bytes().splitlines()
    turns = sum(len(json.loads(line)["messages"]) // 2 for line in lines if is_held_out(line, 0.1))
    assert turns == sum(int(w.sum()) for *_, w in data.eval_batches())  # every turn of every held-out line


def test_bad_lines_name_the_file_and_line(tmp_path, tokenizer):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"messages": []}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: each line must be an object like \{\"text\""):
        PackedRows(JsonlStream([str(tmp_path / "bad.jsonl")], "text"), tokenizer, 64).rows(10)
    with pytest.raises(ValueError, match="No data file matches"):
        train(TrainArgs(data=str(tmp_path / "missing*.jsonl"), run_dir=str(tmp_path / "run")))


def test_odd_lines_are_read_whole_or_named_with_file_and_line(tmp_path, tokenizer):
    """U+2028 / U+2029 / U+0085 inside a string stay in their line; bytes that are not UTF-8 and an SFT line
    whose chat template fails name the file and line (before: a bare UnicodeDecodeError, the template's own
    error)."""
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"text": "one\u2028two\u2029three\x85four"}, ensure_ascii=False) + "\r\n",
                   encoding="utf-8")  # fmt: skip
    record, location = next(JsonlStream([str(odd)], "text", loop=False))
    assert record["text"] == "one\u2028two\u2029three\x85four" and location.endswith("odd.jsonl:1")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9 at column 14\)"):
        PackedRows(JsonlStream([str(tmp_path / "latin1.jsonl")], "text"), tokenizer, 64).rows(10)
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match=r"chat.jsonl:1: the conversation starts with an assistant message"):
        ChatPairs(JsonlStream([str(tmp_path / "chat.jsonl")], "messages"), tokenizer, 160).pairs(1)

    class Refusing:  # a tokenizer whose template raises, as Jinja templates with raise_exception do
        def apply_chat_template(self, *args, **kwargs):
            raise RuntimeError("Conversation roles must alternate user/assistant")

    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(ValueError, match="x.jsonl:7: the tokenizer's chat template failed .*must alternate"):
        conversation_pairs(Refusing(), messages, "x.jsonl:7")


def test_the_shuffle_buffer_holds_one_epoch_of_line_positions(tmp_path, tokenizer):
    """A file shorter than the buffer: each line once per epoch, and the saved state holds positions only
    (before: the buffer filled itself with about 1,000 copies of 50 lines, all pickled into the state)."""
    path = tmp_path / "short.jsonl"
    path.write_text("".join(json.dumps({"text": f"line {i} " + "x" * 30}) + "\n" for i in range(50)))
    stream = JsonlStream([str(path)], "text", shuffle_buffer=1000, seed=1)
    first = [next(stream)[1] for _ in range(50)]
    second = [next(stream)[1] for _ in range(50)]
    assert sorted(first) == sorted(second) == sorted(f"{path}:{i}" for i in range(1, 51)) and first != second
    next(stream)
    state = stream.state_dict()
    assert len(state["buffer"]) == 49 and all(len(entry) == 4 for entry in state["buffer"])
    assert all(isinstance(v, int) for entry in state["buffer"] for v in entry)
    assert len(pickle.dumps(state)) < 10_000  # before: 999 records
    # a state saved by the earlier version held the records themselves: it still resumes, at the same lines
    legacy = {**state, "buffer": [[{"text": "..."}, f"{path}:{line}", epoch] for _, _, line, epoch in state["buffer"]]}
    resumed = [JsonlStream([str(path)], "text", shuffle_buffer=1000, seed=1) for _ in range(2)]
    resumed[0].load_state_dict(state)
    resumed[1].load_state_dict(legacy)
    assert [next(resumed[0]) for _ in range(60)] == [next(resumed[1]) for _ in range(60)]
    with pytest.raises(ValueError, match="does not fit"):
        JsonlStream([str(tmp_path / "other.jsonl")], "text").load_state_dict(state)


BOUNDED_CHILD = r"""
import os, pickle, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))  # a MemoryError beyond it
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from genjo.tokenizer import build_tokenizer
from genjo.train import FileData, TrainArgs
data = FileData(TrainArgs(stage="pretrain", data=sys.argv[1], batch_size=2, seq_len=64, eval_fraction=0.0),
                build_tokenizer())
for step in range(3):
    data.batch(step)
print("state bytes", len(pickle.dumps(data.state_dict())))
"""


@pytest.mark.slow
def test_one_large_document_trains_in_bounded_memory(tmp_path):
    """A file holding one 1 MB document, read under a 2 GiB address-space limit. Before, the shuffle buffer
    held 1,000 copies of it (a 3.3 GB peak, a 1 GB state); now one position, and the state holds the
    document's unread tokens only."""
    rng = random.Random(0)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "river", "Paris", "capital", "sort", "seven"]
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"text": " ".join(rng.choice(words) for _ in range(170_000))}) + "\n")
    result = subprocess.run([sys.executable, "-c", BOUNDED_CHILD, str(path), str(2 * 2**30)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    state_bytes = int(result.stdout.split("state bytes")[-1])
    assert state_bytes < 2 * path.stat().st_size  # the carried tokens of the one document, not 1,000 copies


def test_a_corrupt_training_state_is_named_on_resume(files, tmp_path):
    """Before: RuntimeError (PytorchStreamReader), EOFError, KeyError 'data' / 'records'."""
    run = tmp_path / "run"
    tiny = {**TINY, "save_every": 1, "batch_size": 4, "warmup_steps": 1}
    args = dict(stage="pretrain", run_dir=str(run), steps=2, seq_len=16, **tiny)
    train(TrainArgs(**args))
    state_file = run / "last" / "training_state.pt"
    good = state_file.read_bytes()
    for corrupt, message in ((good[: len(good) // 2], "cannot be read as a training state"),
                             (b"", "cannot be read as a training state"),
                             (None, "not a complete training state \\(no data\\)")):  # fmt: skip
        if corrupt is None:
            state = torch.load(state_file.with_name("good.pt"), weights_only=True)
            del state["data"]
            torch.save(state, state_file)
        else:
            state_file.with_name("good.pt").write_bytes(good)
            state_file.write_bytes(corrupt)
        with pytest.raises(ValueError, match=f"training_state.pt {message}|training_state.pt is {message}"):
            train(TrainArgs(**{**args, "resume": True, "steps": 3}))
    state_file.write_bytes(good)  # a tiny-world run's state resumed with --data: no file position in it
    with pytest.raises(ValueError, match="training_state.pt: the saved data position does not fit this run"):
        train(TrainArgs(**{**args, "resume": True, "steps": 3, "data": str(files / "text.jsonl")}))


def test_sft_rows_from_a_file_keep_the_prompt_and_pad_with_eos(files, tokenizer):
    data = FileData(TrainArgs(stage="sft", data=str(files / "chat.jsonl"), batch_size=8, seed=1), tokenizer)
    ids, prompt_lengths = data.batch(step=0)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    for row, n in zip(ids.tolist(), prompt_lengths.tolist()):
        end = row.index(eot, n) + 1  # the answer ends with <|eot_id|>, then only EOS padding
        assert tokenizer.decode(row[:n]).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        assert set(row[end:]) <= {tokenizer.eos_token_id}

    class Recorder(torch.nn.Module):  # what the model sees: the prompt is never masked
        def forward(self, noisy):
            self.noisy = noisy
            return type("Out", (), {"logits": torch.zeros(*noisy.shape, len(tokenizer))})()

    masked = torch.ones_like(ids, dtype=torch.bool)  # even with every slot drawn for masking
    recorder = Recorder()
    sft_loss(recorder, ids, prompt_lengths, torch.full_like(ids, 2), masked, torch.full(ids.shape, 0.5))
    for row, n in enumerate(prompt_lengths.tolist()):
        assert torch.equal(recorder.noisy[row, :n], ids[row, :n]) and (recorder.noisy[row, n:] == 2).all()


def test_gradient_checkpointing_gives_the_same_gradients(tokenizer):
    import copy

    from genjo.train import new_model

    torch.manual_seed(0)
    plain = new_model(TrainArgs(d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64), tokenizer)
    checkpointed = copy.deepcopy(plain)
    enable_gradient_checkpointing(checkpointed)
    ids = torch.randint(6, 500, (2, 12))
    for model in (plain, checkpointed):
        model(ids).logits.square().mean().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-7)


# ----------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def file_runs(files, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    train(TrainArgs(stage="pretrain", run_dir=str(root / "base"), data=str(files / "text.jsonl"), seq_len=32,
                    steps=40, eval_every=10, **TINY))  # fmt: skip
    train(TrainArgs(stage="sft", run_dir=str(root / "sft"), data=str(files / "chat.jsonl"),
                    init=str(root / "base/final"), steps=30, eval_every=10, eval_fraction=0.1, **TINY))  # fmt: skip
    return root


def test_pretraining_and_sft_from_files_lower_the_loss_and_validation_loss(file_runs):
    pre, sft = curve(file_runs / "base"), curve(file_runs / "sft")
    assert [r["step"] for r in pre] == [10, 20, 30, 40] and [r["step"] for r in sft] == [10, 20, 30]
    for records in (pre, sft):
        assert records[-1]["loss"] < 0.8 * records[0]["loss"], records
        assert records[-1]["val_loss"] < 0.8 * records[0]["val_loss"], records
        assert all(r["tokens_per_s"] > 0 for r in records)
    model, tokenizer = load_model(str(file_runs / "sft" / "final"))
    assert model.config.d_model == 32 and tokenizer.decode(tokenizer("Double: 1")["input_ids"]) == "Double: 1"


def test_resume_continues_exactly(files, tmp_path):
    args = dict(stage="sft", data=str(files / "chat.jsonl"), steps=12, eval_every=4, shuffle_buffer=20,
                **{**TINY, "save_every": 4})  # fmt: skip
    train(TrainArgs(run_dir=str(tmp_path / "straight"), **args))
    train(TrainArgs(run_dir=str(tmp_path / "stopped"), stop_at=6, **args))  # saved at step 4 and 6
    train(TrainArgs(run_dir=str(tmp_path / "stopped"), **{**args, "resume": True}))
    straight, resumed = curve(tmp_path / "straight"), curve(tmp_path / "stopped")
    assert [r["step"] for r in resumed] == [4, 6, 8, 12]
    assert [r["val_loss"] for r in straight if r["step"] in (8, 12)] == [r["val_loss"] for r in resumed[-2:]]
    a, b = (load_file(tmp_path / run / "final" / "model.safetensors") for run in ("straight", "stopped"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_with_accumulation_equal_one_process(files, tmp_path):
    flags = ["--data", str(files / "chat.jsonl"), "--steps", "8", "--eval-every", "4", "--d-model", "32",
             "--n-layers", "2", "--n-heads", "2", "--mlp-hidden-size", "64", "--batch-size", "8", "--lr", "3e-3",
             "--warmup-steps", "3", "--eval-rows", "12", "--eval-fraction", "0.1"]  # fmt: skip
    train(TrainArgs(stage="sft", run_dir=str(tmp_path / "one"), data=str(files / "chat.jsonl"), steps=8, eval_every=4,
                    eval_fraction=0.1, **{**TINY, "eval_rows": 12}))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(free_port()), "-m", "genjo.train", "sft", "--run-dir", str(tmp_path / "two"), "--grad-accum", "2",
               *flags]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 process(es)" in result.stdout
    one, two = curve(tmp_path / "one"), curve(tmp_path / "two")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert a["tokens"] == b["tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)


def test_fine_tuned_embedded_model_answers_the_new_task(tmp_path):
    (tmp_path / "code.jsonl").write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": f"Code word {n}?"}, {"role": "assistant", "content": word}]}
            )
            + "\n"
            for n, word in ((1, "alpha delta"), (2, "echo golf"), (3, "kilo lima"))
        )  # fmt: skip
    )
    final = train(TrainArgs(stage="sft", run_dir=str(tmp_path / "run"), data=str(tmp_path / "code.jsonl"),
                            init=str(ROOT / "genjo/checkpoints/genjo-tiny-instruct"), eval_fraction=0.0,
                            steps=40, batch_size=6, lr=1e-3, warmup_steps=5, eval_every=40, save_every=1000,
                            resume=False))  # fmt: skip
    from genjo.evaluation import answer_questions

    model, tokenizer = load_model(final)
    assert isinstance(model, GenjoModelLM) and model.config.sampler_defaults["gen_length"] == 32
    answers = answer_questions(model, tokenizer, ["Code word 1?", "Code word 2?", "Code word 3?"])
    assert answers == ["alpha delta", "echo golf", "kilo lima"]


def test_the_readme_example_data_file_is_valid_and_leaves_out_the_test_questions(tmp_path, tokenizer):
    from examples.double_task import is_test_question, write_data

    write_data(str(tmp_path / "double.jsonl"), 200, own_tasks=0.5, seed=0)
    stream = JsonlStream([str(tmp_path / "double.jsonl")], "messages", loop=False)
    questions = [record["messages"][0]["content"] for record, _ in stream]
    assert len(questions) == 200 and 60 < sum(q.startswith("Double: ") for q in questions) < 140
    assert not any(is_test_question(q) for q in questions if q.startswith("Double: "))
    pairs = ChatPairs(JsonlStream([str(tmp_path / "double.jsonl")], "messages", loop=False), tokenizer, 160)
    assert len(pairs.pairs(1000)) == 200 and pairs.skipped == 0
