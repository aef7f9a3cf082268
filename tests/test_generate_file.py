"""Batch generation from a JSONL file (generate.py --input/--output, genjo/batch_generation.py).

Runs the embedded instruct checkpoint (GENJO_TEST_MODEL overrides) at its own sampler settings
(gen_length = steps = block_length = 32): answers are exact, and the tiny-world questions have known
answers.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ScriptedModel

import generate as generate_script
from generate import generate
from genjo import batch_generation, storage
from genjo.batch_generation import generate_file, process_info
from genjo.loading import load_model
from genjo.settings import resolve_sampler_settings as sampler_settings

ROOT = Path(__file__).resolve().parent.parent

QUESTIONS = {  # chat question -> the embedded model's answer
    "Sort: 7 3 9 1 4": "1 3 4 7 9",
    "Reverse: alpha bravo charlie delta": "delta charlie bravo alpha",
    "What is the capital of France?": "Paris",
    "What is 23 + 88?": "111",
    "Sort: 5 8 0 7 3 0 2 1": "0 0 1 2 3 5 7 8",
}


# Tiny models run far faster on one thread, and accelerate's workers use one: the same kernels.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loaded(instruct_model_path):
    model, tokenizer = load_model(instruct_model_path, device="cpu")
    return model, tokenizer, sampler_settings(SimpleNamespace(), model)


def write_lines(path: Path, objects) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects), encoding="utf-8")
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in storage.read_lines(path)]


def chat(question: str) -> dict:
    return {"messages": [{"role": "user", "content": question}]}


MIXED = [
    {"prompt": "What is the capital of France? Answer:", "source": "raw"},  # no id: id 1
    "",  # blank lines are skipped (and still counted)
    {"id": "s1", **chat("Sort: 7 3 9 1 4"), "gold": "1 3 4 7 9"},
    {"id": 7, **chat("What is the capital of France?"), "note": "ünïcode kept"},
    {"id": "r", **chat("Reverse: alpha bravo charlie delta")},
    {"prompt": "Sort: 9 5 1 gives"},  # no id: id 6 (its line)
    {"id": "a", **chat("What is 23 + 88?")},
]


def test_file_in_out_with_both_input_kinds_and_any_batch_size(loaded, tmp_path):
    model, tokenizer, settings = loaded
    source = write_lines(tmp_path / "in.jsonl", MIXED)
    summary = generate_file(model, tokenizer, source, tmp_path / "out.jsonl", settings, batch_size=4, progress=False)
    out = read_lines(tmp_path / "out.jsonl")
    assert [o["id"] for o in out] == [1, "s1", 7, "r", 6, "a"]  # input order, line numbers as default ids
    assert list(out[0]) == ["id", "prompt", "source", "answer"]  # the input object, id first, plus answer
    assert out[1]["gold"] == "1 3 4 7 9" and out[2]["note"] == "ünïcode kept"
    assert "ünïcode" in (tmp_path / "out.jsonl").read_text(encoding="utf-8")  # written as UTF-8, not escaped
    assert [out[i]["answer"] for i in (1, 2, 3, 5)] == ["1 3 4 7 9", "Paris", "delta charlie bravo alpha", "111"]
    # A raw prompt is tokenized as is (no chat template): its answer is the solo generate() of those tokens.
    for i in (0, 4):
        ids = torch.tensor([tokenizer(out[i]["prompt"], add_special_tokens=False)["input_ids"]])
        solo = generate(model, ids, **settings)
        assert out[i]["answer"] == tokenizer.decode(solo[0, ids.shape[1] :], skip_special_tokens=True)
    assert (summary.requests, summary.kept, summary.answered, summary.batches) == (6, 0, 6, 2)
    assert summary.nfe == 2 * 32 and summary.answer_tokens > 0
    assert "6 requests" in summary.line("out.jsonl") and "requests/s" in summary.line("out.jsonl")

    # Left padding and attention masks: the batch does not change a single byte.
    generate_file(model, tokenizer, source, tmp_path / "solo.jsonl", settings, batch_size=1, progress=False)
    assert (tmp_path / "solo.jsonl").read_bytes() == (tmp_path / "out.jsonl").read_bytes()


@pytest.mark.parametrize(
    "bad_line,message",
    [
        ('{"prompt": "unterminated', "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"question": "no prompt"}', "exactly one of 'messages'"),
        ('{"prompt": "x", "messages": [{"role": "user", "content": "y"}]}', "exactly one of 'messages'"),
        ('{"prompt": 42}', "'prompt' must be a string"),
        ('{"messages": []}', "non-empty list"),
        ('{"messages": [{"role": "user"}]}', r"messages\[0\] must be an object with string 'role' and 'content'"),
        ('{"id": [1], "prompt": "x"}', "'id' must be an integer or a string"),
        ('{"id": "q", "prompt": "x"}', 'id "q" was already used on line 1'),
        ('{"prompt": "x", "answer": "gold"}', "already has an 'answer'"),
        ('{"prompt": ""}', "the prompt has no tokens"),
        (json.dumps({"prompt": "alpha " * 1100}), "exceed the model's max_sequence_length"),
    ],
)
def test_a_bad_line_is_named_before_anything_is_generated(loaded, tmp_path, bad_line, message):
    model, tokenizer, settings = loaded
    source = write_lines(tmp_path / "in.jsonl", [{"id": "q", "prompt": "Sort: 3 1"}, bad_line])
    with pytest.raises(ValueError, match=rf"in\.jsonl, line 2: .*{message}"):
        generate_file(model, tokenizer, source, tmp_path / "out.jsonl", settings, progress=False)
    assert not (tmp_path / "out.jsonl").exists()


def test_resume_keeps_finished_lines_and_answers_only_the_rest(loaded, tmp_path):
    model, tokenizer, settings = loaded
    requests = [{"id": f"q{i}", **chat(q)} for i, q in enumerate(QUESTIONS)]
    source = write_lines(tmp_path / "in.jsonl", requests)
    generate_file(model, tokenizer, source, tmp_path / "fresh.jsonl", settings, batch_size=2, progress=False)
    fresh = (tmp_path / "fresh.jsonl").read_text().splitlines()

    # An interrupted run: q3 answered in the output (kept verbatim, even an answer this model would not
    # give), q1 in a shard of an interrupted 2-process run, and half a line of q0 (an interrupted write).
    kept = json.dumps({"id": "q3", **chat("What is 23 + 88?"), "answer": "KEPT"})
    out = tmp_path / "out.jsonl"
    out.write_text(kept + "\n" + fresh[0][:20], encoding="utf-8")
    shard = json.dumps({"id": "q1", **chat("Reverse: alpha bravo charlie delta"), "answer": "FROM A SHARD"})
    (tmp_path / "out.jsonl.part1").write_text(shard + "\n", encoding="utf-8")

    summary = generate_file(model, tokenizer, source, out, settings, batch_size=2, progress=False)
    assert (summary.kept, summary.answered) == (2, 3)
    assert out.read_text().splitlines() == [fresh[0], shard, fresh[2], kept, fresh[4]]
    assert not (tmp_path / "out.jsonl.part1").exists()  # merged into the output, in input order

    # Run again: nothing left to answer, the file is unchanged.
    again = generate_file(model, tokenizer, source, out, settings, batch_size=2, progress=False)
    assert (again.kept, again.answered, again.nfe) == (5, 0, 0)
    assert out.read_text().splitlines() == [fresh[0], shard, fresh[2], kept, fresh[4]]

    # An output file holding other ids belongs to another input: refused, not mixed.
    write_lines(tmp_path / "other.jsonl", [{"id": "zz", "prompt": "x", "answer": "y"}])
    with pytest.raises(ValueError, match="belongs to another input file"):
        generate_file(model, tokenizer, source, tmp_path / "other.jsonl", settings, progress=False)


def test_a_request_whose_line_changed_is_answered_again_and_the_run_says_so(loaded, tmp_path, capsys):
    """Ids default to line numbers: a line inserted at the top gives every old line a new id. An answer is
    kept only for the very request it answers (before: the old answers stayed under the shifted ids, so they
    sat on the wrong lines, the last request was answered twice and the new one never)."""
    model, tokenizer, settings = loaded
    first, *rest = list(QUESTIONS)[:4]
    source, out = write_lines(tmp_path / "in.jsonl", [chat(q) for q in rest]), tmp_path / "out.jsonl"
    generate_file(model, tokenizer, source, out, settings, batch_size=2, progress=False)
    write_lines(source, [chat(first), *(chat(q) for q in rest)])
    summary = generate_file(model, tokenizer, source, out, settings, batch_size=2)
    assert (summary.kept, summary.changed, summary.answered) == (0, 3, 4)
    answers = read_lines(out)
    assert [(a["id"], a["messages"][0]["content"], a["answer"]) for a in answers] == [
        (i, q, QUESTIONS[q]) for i, q in enumerate([first, *rest], start=1)
    ]
    said = capsys.readouterr()
    assert "3 request(s) changed since" in said.out + said.err and "input line(s) 1, 2, 3" in said.out + said.err
    assert "answered again 3 whose line changed" in summary.line(out)
    # an edited line with its own id is answered again; the unchanged ones are kept
    lines = [{"id": "a", **chat(first)}, {"id": "b", **chat(rest[0])}]
    generate_file(model, tokenizer, write_lines(source, lines), out2 := tmp_path / "out2.jsonl", settings,
                  progress=False)  # fmt: skip
    lines[1] = {"id": "b", **chat(rest[1])}
    summary = generate_file(model, tokenizer, write_lines(source, lines), out2, settings, progress=False)
    assert (summary.kept, summary.changed, summary.answered) == (1, 1, 1)
    assert [a["answer"] for a in read_lines(out2)] == [QUESTIONS[first], QUESTIONS[rest[1]]]


def test_json_lines_split_only_at_newlines(loaded, tmp_path):
    """U+2028, U+2029 and U+0085 are legal raw inside JSON strings, and Genjo's writer emits them raw: the
    line is one request (before: split there, the line was rejected as invalid JSON)."""
    model, tokenizer, settings = loaded
    odd = "Sort: 7 3 9 1 4\u2028\u2029\x85\x0c"
    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"prompt": odd}, ensure_ascii=False), json.dumps(chat("Sort: 5 8 0 7 3 0 2 1"))]
    source.write_text(lines[0] + "\r\n" + lines[1] + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    summary = generate_file(model, tokenizer, source, out, settings, progress=False)
    assert summary.answered == 2 and [(a["id"], a.get("prompt")) for a in read_lines(out)] == [(1, odd), (2, None)]
    again = generate_file(model, tokenizer, source, out, settings, progress=False)  # the output reads back too
    assert (again.kept, again.answered) == (2, 0)


def test_a_non_utf8_line_is_named(loaded, tmp_path):
    model, tokenizer, settings = loaded
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"in\.jsonl, line 2: not UTF-8 text \(byte 0xe9 at column 16\)"):
        generate_file(model, tokenizer, source, tmp_path / "out.jsonl", settings, progress=False)


def test_unusable_input_or_output_is_named_before_anything_is_generated(loaded, tmp_path, monkeypatch):
    model, tokenizer, settings = loaded
    source = write_lines(tmp_path / "in.jsonl", [chat("Sort: 3 1")])

    def no_generation(*args, **kwargs):
        raise AssertionError("generation started before the output was checked")

    monkeypatch.setattr(batch_generation, "generate_batch", no_generation)
    with pytest.raises(ValueError, match="--input .* is a folder"):
        generate_file(model, tokenizer, tmp_path, tmp_path / "out.jsonl", settings, progress=False)
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="--output .*taken is a folder; give a file name"):
        generate_file(model, tokenizer, source, tmp_path / "taken", settings, progress=False)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        with pytest.raises(ValueError, match="is not writable|cannot be written"):
            generate_file(model, tokenizer, source, locked / "out.jsonl", settings, progress=False)


def test_seeded_sampling_does_not_depend_on_batch_size_or_order(loaded, tmp_path):
    model, tokenizer, settings = loaded
    hot = {**settings, "temperature": 1.5, "gen_length": 16, "steps": 16, "block_length": 16}
    requests = [{"id": f"q{i}", "prompt": q} for i, q in enumerate(list(QUESTIONS)[:3])] + [
        {"id": "x", **chat("Sort: 4 2")}
    ]
    forward = write_lines(tmp_path / "forward.jsonl", requests)
    backward = write_lines(tmp_path / "backward.jsonl", requests[::-1])

    def answers(source, name, batch_size, seed):
        generate_file(model, tokenizer, source, tmp_path / name, hot, batch_size=batch_size, seed=seed,
                      progress=False)  # fmt: skip
        return {o["id"]: o["answer"] for o in read_lines(tmp_path / name)}

    one = answers(forward, "a.jsonl", 8, seed=1)
    assert answers(backward, "b.jsonl", 3, seed=1) == one
    assert answers(forward, "c.jsonl", 8, seed=2) != one  # the seed does reach the sampler


def test_cli_flags_default_to_the_checkpoints_sampler_settings(loaded):
    model = loaded[0]
    parser = generate_script.build_parser()
    settings = sampler_settings(parser.parse_args([]), model)
    assert model.config.sampler_defaults["steps"] == 32
    assert {k: settings[k] for k in ("gen_length", "steps", "block_length")} == dict(
        gen_length=32, steps=32, block_length=32
    )
    user = sampler_settings(parser.parse_args(["--steps", "16", "--cache", "dual", "--early-stop"]), model)
    assert (user["steps"], user["gen_length"], user["cache"], user["early_stop"]) == (16, 32, "dual", True)
    # A checkpoint without sampler_defaults falls back to generate()'s defaults.
    bare = sampler_settings(parser.parse_args([]), ScriptedModel([1]))
    assert (bare["gen_length"], bare["steps"], bare["block_length"], bare["threshold"]) == (128, 128, 128, None)
    for action in parser._actions:
        if action.dest != "help":
            assert action.help and "default" in action.help, action.dest


def test_demo_without_input_answers_the_three_questions(instruct_model_path, capsys):
    generate_script.main(["--model", instruct_model_path, "--device", "cpu"])
    out = capsys.readouterr().out
    assert "Q: Sort: 7 3 9 1 4\nA: 1 3 4 7 9" in out
    assert "A: Paris" in out and "A: delta charlie bravo alpha" in out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_accelerate_processes_write_the_single_process_file(instruct_model_path, tmp_path):
    """accelerate launch with 2 CPU processes (gloo) writes the same bytes as one process."""
    questions = [*QUESTIONS, "What is the capital of Ghana?", "Reverse: papa hotel mike", "What is 60 + 90?"]
    requests = [chat(q) if i % 3 else {"prompt": q} for i, q in enumerate(questions)]
    source = write_lines(tmp_path / "in.jsonl", requests)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    flags = ["--model", instruct_model_path, "--input", str(source), "--batch-size", "2"]
    # The single-process reference in this process, through the same command line (one thread, as the workers).
    generate_script.main([*flags, "--device", "cpu", "--output", str(tmp_path / "one.jsonl")])
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), str(ROOT / "generate.py"), *flags,
              "--output", str(tmp_path / "two.jsonl")]  # fmt: skip
    two = subprocess.run(launch, cwd=tmp_path, env={**env, "ACCELERATE_USE_CPU": "true"}, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert "on 2 processes" in two.stdout and two.stdout.count("requests/s") == 1  # one summary, by the main
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "one.jsonl", "two.jsonl"]  # no shards left
    assert len(read_lines(tmp_path / "two.jsonl")) == len(questions)


def test_process_info_is_single_without_a_launcher(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = process_info()
    assert (info.rank, info.world_size, info.is_main, info.state) == (0, 1, True, None)
    assert info.gather("x") == ["x"]
