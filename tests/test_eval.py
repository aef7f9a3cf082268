"""Tests of the lm-eval adapter (eval_genjo.py) and the offline tasks (eval_tasks/).

Mechanics run on a tiny random-initialised model saved to a temporary folder; the accuracy test
uses the embedded checkpoints (override with GENJO_TEST_BASE_MODEL / GENJO_TEST_MODEL). Everything
runs offline through lm-eval's own runner with TaskManager(include_defaults=False).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from eval_genjo import GenjoEvalHarness, evaluate_offline  # noqa: E402
from genjo.loading import DEFAULT_BASE_MODEL, DEFAULT_MODEL  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BASE_MODEL = os.environ.get("GENJO_TEST_BASE_MODEL", DEFAULT_BASE_MODEL)
INSTRUCT_MODEL = os.environ.get("GENJO_TEST_MODEL", DEFAULT_MODEL)
FAST = dict(mc_num=4, batch_size=4, steps=8, gen_length=8, block_length=8, device="cpu")


def request(*args):
    """A stand-in for lm-eval's Instance: the harness only reads ``.args``."""
    return types.SimpleNamespace(args=args)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run far faster on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory) -> str:
    """A deterministic random-initialised tiny Genjo model with the embedded tokenizer."""
    from genjo.tokenizer import build_tokenizer
    from genjo.train import TrainArgs, new_model

    folder = tmp_path_factory.mktemp("tiny-random")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = new_model(TrainArgs(d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64), tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def harness(tiny_model_path) -> GenjoEvalHarness:
    return GenjoEvalHarness(model_path=tiny_model_path, **FAST)


# ----------------------------------------------------------------------------- arguments and tokenization


def test_string_model_args_are_cast_and_cuda_falls_back(tiny_model_path):
    """The CLI passes strings and device='cuda:0' even on a CPU machine."""
    lm = GenjoEvalHarness.create_from_arg_string(
        f"model_path={tiny_model_path},mc_num=8,is_check_greedy=False,cfg=0.5,chat_template=True,steps=4,"
        "gen_length=8,block_length=4,threshold=None,logits_eos_inf=True",
        {"batch_size": "2", "max_batch_size": None, "device": "cuda:0"},
    )
    assert (lm.mc_num, lm.batch_size, lm.is_check_greedy, lm.cfg, lm.chat_template) == (8, 2, False, 0.5, True)
    assert lm.logits_eos_inf is True and lm.generate_extras == {}
    assert lm.max_length == lm.model.config.max_sequence_length
    assert lm.mask_id == lm.model.config.mask_token_id
    if not torch.cuda.is_available():
        assert lm.device.type == "cpu"


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(gen_lenght=8), "unknown model argument"),
        (dict(remasking="top_k"), "remasking"),
        (dict(batch_size="auto"), "batch_size"),
        (dict(is_check_greedy="maybe"), "boolean"),
        (dict(gen_length=12, block_length=8), "multiple of block_length"),
    ],
)
def test_bad_model_args_raise_value_error(tiny_model_path, bad, message):
    with pytest.raises(ValueError, match=message):
        GenjoEvalHarness(model_path=tiny_model_path, **{**FAST, **bad})


def test_encode_pair_moves_trailing_whitespace(harness):
    tok = harness.tokenizer
    context_ids, continuation_ids = harness._encode_pair("The capital of France is ", "Paris.")
    assert context_ids == tok("The capital of France is", add_special_tokens=False)["input_ids"]
    assert tok.decode(continuation_ids) == " Paris."
    assert (
        context_ids + continuation_ids == tok("The capital of France is Paris.", add_special_tokens=False)["input_ids"]
    )


def test_chat_template_renders_user_turn_and_answer(tiny_model_path):
    lm = GenjoEvalHarness(model_path=tiny_model_path, chat_template=True, **FAST)
    context_ids, answer_ids = lm._encode_pair("What is 2 + 3?", " 5")
    expected = "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 3?<|eot_id|>"
    expected += "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert lm.tokenizer.decode(context_ids) == expected
    assert answer_ids == lm.tokenizer("5", add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- likelihood


def test_batch_size_must_divide_mc_num_for_likelihood(tiny_model_path):
    lm = GenjoEvalHarness(model_path=tiny_model_path, **{**FAST, "mc_num": 12, "batch_size": 8})
    with pytest.raises(ValueError, match="must divide mc_num"):
        lm.loglikelihood([request("12 + 30 =", " 42.")])


def test_loglikelihood_rolling_is_not_implemented(harness):
    with pytest.raises(NotImplementedError, match="left-to-right"):
        harness.loglikelihood_rolling([request("some text")])


def test_over_length_request_raises_value_error(harness):
    long_context = " ".join(["alpha"] * (harness.max_length + 10))
    with pytest.raises(ValueError, match="max_length"):
        harness.loglikelihood([request(long_context, " bravo")])


def test_loglikelihood_is_independent_of_order_and_neighbours(harness):
    """Each request is seeded from its text, so a result does not depend on what runs around it."""
    reqs = [request("Sort 3 1 2 and you get", " 1 2 3."), request("12 + 30 =", " 42."), request("", " Paris.")]
    together = harness.loglikelihood(reqs)
    alone = [harness.loglikelihood([r])[0] for r in reversed(reqs)][::-1]
    assert together == alone
    assert all(isinstance(ll, float) and ll < 0 for ll, _ in together)


def test_suffix_greedy_prediction_matches_the_sampler(harness):
    """One token per step by confidence is what generate() does with steps = gen_length."""
    from generate import generate

    prefix = torch.tensor(harness.tokenizer("Reverse alpha bravo and you get", add_special_tokens=False)["input_ids"])
    out = generate(harness.model, prefix[None], steps=5, gen_length=5, block_length=5, mask_id=harness.mask_id)
    target = out[0, len(prefix) :]
    assert harness.suffix_greedy_prediction(prefix, target)
    wrong = target.clone()
    wrong[0] = (wrong[0] + 1) % 100 + 10
    assert not harness.suffix_greedy_prediction(prefix, wrong)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_loglikelihood_memory_does_not_grow_with_requests(tiny_model_path):
    """Requests are tokenized and scored one at a time: thousands of them stay under a fixed RSS bound."""
    lm = GenjoEvalHarness(model_path=tiny_model_path, mc_num=1, batch_size=1, is_check_greedy=False, device="cpu")

    def requests(n):  # generated lazily, so only the harness can hold memory
        for i in range(n):
            yield request(f"What is {i % 97} + {i % 89}? " + "alpha bravo " * (i % 20), f" {i % 97 + i % 89}.")

    lm.loglikelihood(requests(200), disable_tqdm=True)  # warm-up: allocator pools, tokenizer caches
    before = _rss_kib()
    results = lm.loglikelihood(requests(2000), disable_tqdm=True)
    growth_mib = (_rss_kib() - before) / 1024
    assert len(results) == 2000
    print(f"RSS growth over 2000 requests: {growth_mib:.1f} MiB")
    assert growth_mib < 32, f"RSS grew by {growth_mib:.1f} MiB over 2000 requests"


# ----------------------------------------------------------------------------- generation


def test_generate_until_batches_keep_order_and_cut_at_stops(tiny_model_path):
    questions = ["What is 1 + 2?", "Sort: 3 1 2", "Reverse: alpha bravo charlie delta", "What is the capital of Peru?"]
    reqs = [request(q, {"until": ["\n"], "do_sample": False}) for q in questions]
    batched = GenjoEvalHarness(model_path=tiny_model_path, chat_template=True, **{**FAST, "batch_size": 3})
    single = GenjoEvalHarness(model_path=tiny_model_path, chat_template=True, **{**FAST, "batch_size": 1})
    answers = batched.generate_until(reqs)
    assert answers == single.generate_until(reqs)  # left padding + attention mask = each prompt alone
    assert all(isinstance(a, str) and "\n" not in a and "<|" not in a for a in answers)

    eot = "<|eot_id|>"
    ids = batched._tokens("1 2 3" + eot + "junk\nmore")
    assert batched._finish(ids, ["\n"]) == "1 2 3junk"  # special tokens are dropped after the cut
    assert batched._finish(ids, [eot, "\n"]) == "1 2 3"


def test_generate_until_task_single_process(tiny_model_path):
    """lm-eval's runner, one process, the generation task, padded batches."""
    res = evaluate_offline(["genjo_tiny_gen"], dict(model_path=tiny_model_path, chat_template=True, **FAST), limit=6)
    metrics = res["results"]["genjo_tiny_gen"]
    assert metrics["sample_len"] == 6 and 0.0 <= metrics["exact_match,strip"] <= 1.0


# ----------------------------------------------------------------------------- accuracy of the embedded models


def _require(path: str) -> None:
    if not Path(path).is_dir():
        pytest.skip(f"checkpoint {path} is not there yet (train it, or set GENJO_TEST_BASE_MODEL / GENJO_TEST_MODEL)")


@pytest.mark.slow
def test_embedded_base_model_beats_chance_on_choice_task():
    """4-way choice by likelihood (chance 25%). Per-request seeds make the result a fixed number per checkpoint."""
    _require(BASE_MODEL)
    args = dict(model_path=BASE_MODEL, mc_num=16, batch_size=16, is_check_greedy=False, device="cpu")
    res = evaluate_offline(["genjo_tiny_choice"], args, limit=40)
    assert res["results"]["genjo_tiny_choice"]["acc,none"] >= 0.3


@pytest.mark.slow
def test_embedded_instruct_model_answers_held_out_questions():
    """Exact-match generation through the chat template (chance about 0%).

    The shipped model answers every sorting, reversal and addition document; capitals ask about held-out
    countries (a transfer test it fails), a quarter of the documents: 75% in all.
    """
    _require(INSTRUCT_MODEL)
    args = dict(model_path=INSTRUCT_MODEL, chat_template=True, steps=32, gen_length=32, block_length=32,
                batch_size=40, device="cpu")  # fmt: skip
    res = evaluate_offline(["genjo_tiny_gen"], args, limit=40)
    assert res["results"]["genjo_tiny_gen"]["exact_match,strip"] >= 0.7


# ----------------------------------------------------------------------------- data parallel

WORKER = """
import json, os, sys
from eval_genjo import GenjoEvalHarness, evaluate_offline

lm = GenjoEvalHarness(**json.loads(sys.argv[1]))
res = evaluate_offline(["genjo_tiny_choice", "genjo_tiny_gen"], lm=lm, limit=5, log_samples=True)
out = {"rank": lm.rank, "world_size": lm.world_size}
if res is not None:
    out.update(results=res["results"], samples=res["samples"])
with open(os.path.join(sys.argv[2], f"rank{lm.rank}.json"), "w") as f:
    json.dump(out, f, default=str)
"""


def _responses(samples: dict) -> dict:
    """(task, doc_id) -> flat list of the model's responses, for comparing runs."""
    flat = {}
    for task, rows in samples.items():
        for row in rows:
            flat[task, row["doc_id"]] = [r for resp in row["resps"] for r in resp]
    return flat


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None, reason="no accelerate")
def test_two_cpu_processes_give_the_single_process_metrics(tiny_model_path, tmp_path):
    """accelerate launch with 2 CPU processes (gloo): lm-eval shards the documents by rank; the
    gathered metrics and every response equal those of one process."""
    args = dict(model_path=tiny_model_path, chat_template=False, **FAST)
    (tmp_path / "worker.py").write_text(textwrap.dedent(WORKER))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29531",
               str(tmp_path / "worker.py"), json.dumps(args), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]

    # One thread here (fixture one_thread) as in the workers: the same kernels.
    single = evaluate_offline(["genjo_tiny_choice", "genjo_tiny_gen"], args, limit=5, log_samples=True)
    parallel = ranks[0]
    for task in ("genjo_tiny_choice", "genjo_tiny_gen"):
        for key, value in single["results"][task].items():
            if isinstance(value, float):
                assert parallel["results"][task][key] == pytest.approx(value, abs=1e-9), (task, key)
    one = _responses(json.loads(json.dumps(single["samples"], default=str)))  # tuples -> lists, as in the file
    two = _responses(parallel["samples"])
    assert one.keys() == two.keys() and len(one) == 10
    for key in one:
        for a, b in zip(one[key], two[key]):
            if isinstance(a, list):  # loglikelihood: (ll, is_greedy)
                assert b == pytest.approx(a, rel=1e-5, abs=1e-5), key
            else:
                assert a == b, key
