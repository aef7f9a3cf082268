"""Bad inputs end in a clear error that names the argument: never a hang, a crash deep in torch, or masks as an answer.

109 bad inputs are tried, and each ends as follows:

- 60 arguments of ``generate()`` (wrong types such as float or bool counts, lists for tensors, an int32
  prompt, a model that is None, a stats that is not a GenerationStats; token ids that are negative or past
  the vocabulary, a mask id equal to the EOS or EoT id; attention masks that are lists or hold values other
  than 0/1; non-finite or negative numbers; inconsistent lengths): each raises ValueError before any
  forward, with a message naming the argument.
- 7 sampling runs whose logits cannot be decoded (a model returning NaN, +inf or all -inf, with the steps
  schedule, parallel decoding and the dual cache, and a finite cfg_scale so large that the guidance
  overflows): each raises ValueError naming the non-finite logits at the first step (before this check they
  returned an answer of masks, or never returned with threshold/factor). Every ``generate()`` call runs in
  a thread with a time limit, so a hang fails the test instead of stalling the suite.
- 27 arguments of ``get_log_likelihood()`` / ``get_log_likelihoods()`` (a mask id past the vocabulary
  among them): each raises ValueError naming the argument before any forward.
- 3 likelihood runs whose logits hold NaN, +inf or only -inf: each raises the sampler's ValueError naming
  the non-finite logits.
- 10 command lines of ``chat.py`` (bad flag values and combinations, an unknown or unavailable
  ``--device``, a ``--model`` that does not load): each ends at start-up, before the first question, with
  an error line naming the flag: exit status 2 for a bad value or combination of flags (after argparse's
  usage line), 1 with that one line alone for a device or model that cannot be used; never a traceback.
- 2 user texts spelling special tokens (``<|eot_id|>``, ``<|mdm_mask|>``): tokenized as plain text in the
  chat prompt (no special id from the user's text), the template's own specials unchanged.
"""

import math
import re
import threading

import pytest
import torch
from conftest import BOS, EOS, EOT, MASK

import chat
from generate import generate
from genjo.chat_format import encode_chat
from genjo.sampling import DualCache, PrefixCache
from get_log_likelihood import get_log_likelihood, get_log_likelihoods

TIME_LIMIT_S = 60  # far above the tiny model's runtime (well under a second): reaching it means a hang
VOCAB = 64  # embedding_size of the test models (vocab_size 60, padded to 64)
PROMPT = torch.tensor([[BOS, 7, 8, 9]])  # (1, 4) int64
SETTINGS = dict(steps=8, gen_length=8, block_length=8)


def within_time_limit(fn, *args, **kwargs):
    """fn(*args, **kwargs) run in a thread; fails the test when it has not returned after TIME_LIMIT_S."""
    outcome = {}

    def target():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as error:  # re-raised in the test's thread below
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(TIME_LIMIT_S)
    assert not thread.is_alive(), f"{fn.__name__} did not return within {TIME_LIMIT_S} s: it hangs"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ----------------------------------------------------------------------------- generate(): arguments


def _padded_with_mask():
    prompt = PROMPT.clone()
    prompt[0, 0] = MASK
    return prompt


ONES = torch.ones_like(PROMPT)
GENERATE_CASES = [
    # prompt
    (dict(prompt=[[BOS, 7, 8]]), "prompt must be an int64 tensor"),
    (dict(prompt=PROMPT[0]), "prompt must be .*got shape \\(4,\\)"),
    (dict(prompt=PROMPT.int()), "prompt must be an int64.*torch.int32"),
    (dict(prompt=PROMPT.float()), "prompt must be an int64.*torch.float32"),
    (dict(prompt=PROMPT.bool()), "prompt must be an int64.*torch.bool"),
    (dict(prompt=PROMPT[:, :0]), "prompt is empty"),
    (dict(prompt=torch.tensor([[BOS, VOCAB]])), f"prompt holds the token id {VOCAB}, outside"),
    (dict(prompt=torch.tensor([[BOS, 10**6]])), "prompt holds the token id 1000000"),
    (dict(prompt=torch.tensor([[BOS, -1]])), "prompt holds the token id -1"),
    # counts and lengths
    (dict(steps=8.0), "steps must be an int"),
    (dict(steps=True), "steps must be an int"),
    (dict(steps="8"), "steps must be an int"),
    (dict(steps=None), "steps must be an int"),
    (dict(steps=0), "steps \\(0\\) must be a positive multiple"),
    (dict(steps=-8), "steps \\(-8\\) must be a positive multiple"),
    (dict(gen_length=16, block_length=8, steps=5), "steps \\(5\\) must be a positive multiple"),
    (dict(gen_length=8.0), "gen_length must be an int"),
    (dict(gen_length=True, block_length=1, steps=1), "gen_length must be an int"),
    (dict(gen_length=0), "gen_length \\(0\\) and block_length \\(8\\) must be positive"),
    (dict(gen_length=-8), "gen_length \\(-8\\)"),
    (dict(block_length=4.0), "block_length must be an int"),
    (dict(block_length=0), "block_length \\(0\\) must be positive"),
    (dict(gen_length=10, block_length=4), "gen_length \\(10\\) must be a multiple of block_length"),
    (dict(gen_length=200, block_length=200, steps=200), "gen_length \\(200\\) exceeds .*max_sequence_length"),
    # numbers
    (dict(temperature=math.nan), "temperature must be a finite number"),
    (dict(temperature=math.inf), "temperature must be a finite number"),
    (dict(temperature=-math.inf), "temperature must be a finite number"),
    (dict(temperature=-1.0), "temperature \\(-1.0\\) must be >= 0"),
    (dict(temperature="0"), "temperature must be a number"),
    (dict(cfg_scale=math.nan), "cfg_scale must be a finite number"),
    (dict(cfg_scale=math.inf), "cfg_scale must be a finite number"),
    (dict(cfg_scale=-0.5), "cfg_scale \\(-0.5\\) must be >= 0"),
    (dict(threshold=math.nan), "threshold must be a finite number"),
    (dict(threshold=math.inf), "threshold must be a finite number"),
    (dict(threshold=-math.inf), "threshold must be a finite number"),
    (dict(threshold="0.9"), "threshold must be a number"),
    (dict(factor=math.nan), "factor must be a finite number"),
    (dict(factor=math.inf), "factor must be a finite number"),
    (dict(factor=0.0), "factor \\(0.0\\) must be > 0"),
    (dict(threshold=0.9, factor=1.0), "threshold and factor are exclusive"),
    (dict(threshold=0.9, remasking="random"), "threshold/factor .*remasking='low_confidence'"),
    # options
    (dict(remasking="top_k"), "remasking='top_k' is unknown"),
    (dict(cache="kv"), "cache='kv' is unknown"),
    (dict(cache=lambda: DualCache(refresh_every=1.5)), "refresh_every must be an int"),
    (dict(cache=lambda: DualCache(refresh_every=0)), "refresh_every needs a cache .* must be >= 1"),
    (dict(cache=PrefixCache), "cache=<class .*PrefixCache'> is unknown"),  # the class, not an instance
    (dict(mask_id=VOCAB), f"mask_id \\({VOCAB}\\) is outside the model's vocabulary"),
    (dict(eos_id=-1), "eos_id \\(-1\\) must be >= 0"),
    (dict(step_callback="print"), "step_callback must be a function"),
    (dict(mask_id=EOS), f"mask_id equals eos_id \\({EOS}\\)"),  # before: accepted, the answer was garbage
    (dict(mask_id=EOT), f"mask_id equals eot_id \\({EOT}\\)"),
    (dict(stats="x"), "stats must be a GenerationStats"),  # before: crashed deep inside
    (dict(model=None), "model must be a mask predictor"),  # before: crashed deep inside
    (dict(steps=torch.tensor(8.0)), "steps must be an int"),  # a 0-d tensor counts as the number it holds
    # attention mask
    (dict(attention_mask=[[1, 1, 1, 1]]), "attention_mask must be a tensor"),
    (dict(attention_mask=ONES * 2), "attention_mask must hold only 1 .* and 0"),
    (dict(attention_mask=ONES * 0.5), "attention_mask must hold only 1 .* and 0"),
    (dict(attention_mask=ONES[:, 1:]), "attention_mask has shape \\(1, 3\\)"),
    (dict(attention_mask=ONES * 0), "a row of attention_mask is all zeros"),
    (dict(prompt=_padded_with_mask(), attention_mask=torch.tensor([[0, 1, 1, 1]])), "mask id .* attention_mask"),
]


class GuardedModel(torch.nn.Module):
    """The test model's config, with a forward that fails the test: the checks must come before any forward."""

    def __init__(self, model):
        super().__init__()
        self.config = model.config

    def forward(self, *args, **kwargs):
        raise AssertionError("the model ran: the bad argument was not caught up front")


@pytest.mark.parametrize("bad,message", GENERATE_CASES, ids=[f"generate-{i}" for i in range(len(GENERATE_CASES))])
def test_generate_rejects_bad_arguments(model, bad, message):
    kwargs = {**SETTINGS, "prompt": PROMPT, "model": GuardedModel(model), **bad}
    with pytest.raises(ValueError, match=message):
        if getattr(kwargs.get("cache"), "__name__", None) == "<lambda>":  # a cache strategy whose construction fails
            kwargs["cache"] = kwargs["cache"]()
        within_time_limit(generate, **kwargs)


def test_zero_dim_tensors_count_as_the_numbers_they_hold(model):
    """steps, lengths, temperature or mc_num given as 0-d tensors (e.g. read from a schedule) sample as the
    plain numbers (before: rejected as not an int / not a number)."""
    as_numbers = generate(model, PROMPT, **SETTINGS, temperature=0.0)
    lengths = dict(steps=torch.tensor(8), gen_length=torch.tensor(8), block_length=torch.tensor(8))
    as_tensors = generate(model, PROMPT, **lengths, temperature=torch.tensor(0.0), cfg_scale=torch.tensor(0))
    assert torch.equal(as_numbers, as_tensors)
    torch.manual_seed(0)
    plain = get_log_likelihood(model, PROMPT[0], ANSWER, mc_num=4, batch_size=4)
    torch.manual_seed(0)
    assert get_log_likelihood(model, PROMPT[0], ANSWER, mc_num=torch.tensor(4), batch_size=torch.tensor(4)) == plain


# ----------------------------------------------------------------------------- generate(): undecodable logits


class BrokenLogits(torch.nn.Module):
    """The test model, with `value` written into every logit of token 3 (NaN, +inf) or into all of them."""

    def __init__(self, model, value: float, everywhere: bool = False):
        super().__init__()
        self.model, self.value, self.everywhere = model, value, everywhere
        self.config = model.config

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        if self.everywhere:
            out.logits.fill_(self.value)
        else:
            out.logits[..., 3] = self.value
        return out


NONFINITE_CASES = [
    ("nan", dict(value=math.nan), {}),
    ("+inf", dict(value=math.inf), {}),
    ("all -inf", dict(value=-math.inf, everywhere=True), {}),
    ("nan, parallel threshold", dict(value=math.nan), dict(threshold=0.9)),
    ("nan, dual cache", dict(value=math.nan), dict(cache="dual")),
    ("overflowing cfg_scale", None, dict(cfg_scale=1e308)),
    ("overflowing cfg_scale, parallel factor", None, dict(cfg_scale=1e308, factor=1.0)),
]


@pytest.mark.parametrize("broken,extra", [c[1:] for c in NONFINITE_CASES], ids=[c[0] for c in NONFINITE_CASES])
def test_generate_stops_on_logits_it_cannot_decode(model, broken, extra):
    predictor = BrokenLogits(model, **broken) if broken else model
    with pytest.raises(ValueError, match="non-finite logits .* at block 0, step 0"):
        within_time_limit(generate, predictor, PROMPT, **{**SETTINGS, **extra})


def test_finite_logits_with_some_minus_inf_still_decode(model):
    """-inf on a few tokens (ruled out, as logits_eos_inf does) is not an error."""
    out = within_time_limit(generate, model, PROMPT, **SETTINGS, logits_eos_inf=True, confidence_eos_eot_inf=True)
    assert out.shape == (1, 12) and not (out == MASK).any() and not (out[0, 4:] == EOS).any()


# ----------------------------------------------------------------------------- the likelihood

ANSWER = torch.tensor([10, 11, 12])
LIKELIHOOD_CASES = [
    (dict(mc_num=8.0), "mc_num must be an int"),
    (dict(mc_num=True), "mc_num must be an int"),
    (dict(mc_num="8"), "mc_num must be an int"),
    (dict(mc_num=0), "mc_num \\(0\\) must be >= 1"),
    (dict(mc_num=-4), "mc_num \\(-4\\) must be >= 1"),
    (dict(batch_size=2.0), "batch_size must be an int"),
    (dict(batch_size=0), "batch_size \\(0\\) must be >= 1"),
    (dict(mc_num=8, batch_size=3), "batch_size \\(3\\) must divide mc_num \\(8\\)"),
    (dict(cfg_scale=math.nan), "cfg_scale must be a finite number"),
    (dict(cfg_scale=math.inf), "cfg_scale must be a finite number"),
    (dict(cfg_scale=-1.0), "cfg_scale \\(-1.0\\) must be >= 0"),
    (dict(mask_id=1.5), "mask_id must be an int"),
    (dict(mask_id=VOCAB), f"mask_id \\({VOCAB}\\) is outside the model's vocabulary"),  # before: IndexError
    (dict(answer=ANSWER.float()), "answer must hold int token ids; got dtype torch.float32"),
    (dict(answer=[10.0, 11.0]), "answer must hold int token ids; got dtype torch.float32"),
    (dict(answer=ANSWER.bool()), "answer must hold int token ids; got dtype torch.bool"),
    (dict(answer="Paris"), "answer must be a 1-D sequence of int token ids; got str"),
    (dict(answer=torch.tensor([10, VOCAB])), f"answer holds the token id {VOCAB}, outside"),
    (dict(answer=torch.tensor([-3, 10])), "answer holds the token id -3"),
    (dict(prompt=torch.tensor([BOS, 99])), "prompt holds the token id 99"),
    (dict(prompt=PROMPT[0].double()), "prompt must hold int token ids; got dtype torch.float64"),
    (dict(answer=torch.tensor([], dtype=torch.long)), "answer is empty"),
    (dict(answer=ANSWER[None].repeat(2, 1)), "answer must be a 1-D sequence .* got shape \\(2, 3\\)"),
    (dict(answer=torch.tensor([10, MASK])), "answer contains the mask id"),
    (dict(answer=torch.arange(3, 100) % 50 + 6), "prompt \\+ answer .* max_sequence_length"),
]


@pytest.mark.parametrize("bad,message", LIKELIHOOD_CASES, ids=[f"likelihood-{i}" for i in range(len(LIKELIHOOD_CASES))])
def test_likelihood_rejects_bad_arguments(model, bad, message):
    kwargs = {"prompt": PROMPT[0], "answer": ANSWER, "mc_num": 4, "batch_size": 4, **bad}
    with pytest.raises(ValueError, match=message):
        get_log_likelihood(GuardedModel(model), **kwargs)


LIKELIHOOD_NONFINITE_CASES = [
    ("nan", dict(value=math.nan)),
    ("+inf", dict(value=math.inf)),
    ("all -inf", dict(value=-math.inf, everywhere=True)),
]


@pytest.mark.parametrize(
    "broken", [c[1] for c in LIKELIHOOD_NONFINITE_CASES], ids=[c[0] for c in LIKELIHOOD_NONFINITE_CASES]
)
def test_likelihood_stops_on_non_finite_logits(model, broken):
    """As the sampler does (before: the estimate came back as nan, -inf or a finite but meaningless number)."""
    with pytest.raises(ValueError, match="non-finite logits .* in the likelihood's forward 0: check the weights"):
        get_log_likelihood(BrokenLogits(model, **broken), PROMPT[0], ANSWER, mc_num=4, batch_size=4)


@pytest.mark.parametrize(
    "pairs,kwargs,message",
    [
        ([PROMPT[0]], {}, "pairs must hold \\(prompt, answer\\) pairs"),
        ([(PROMPT[0], ANSWER)], dict(generators=["seed"]), "generators must hold torch.Generator"),
    ],
)
def test_likelihoods_reject_bad_pairs_and_generators(model, pairs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_log_likelihoods(GuardedModel(model), pairs, mc_num=4, batch_size=4, **kwargs)


# ----------------------------------------------------------------------------- chat.py start-up


CHAT_CASES = [
    (["--steps", "0"], 2, "bad sampler settings .*--steps 0.*: steps \\(0\\) must be a positive multiple"),
    (["--gen-length", "2.5"], 2, "argument --gen-length: invalid int value: '2.5'"),
    (["--temperature", "nan"], 2, "bad sampler settings .*--temperature nan.*: temperature must be a finite number"),
    (["--cfg", "inf"], 2, "bad sampler settings .*--cfg-scale inf.*: cfg_scale must be a finite"),  # the old spelling
    (["--remasking", "top_k"], 2, "argument --remasking: invalid choice"),
    (["--gen-length", "48"], 2, "bad sampler settings .* gen_length \\(48\\) must be a multiple of block_length"),
    (["--gen-length", "2048", "--steps", "2048"], 2, "bad sampler settings .*max_sequence_length"),
    (["--device", "nonsense"], 1, "--device 'nonsense' is not a device name"),
    (["--device", "cuda:99"], 1, "--device 'cuda:99' is not available here"),
    (["--model", "/nonexistent/genjo-folder"], 1, "cannot load --model /nonexistent/genjo-folder"),
]


@pytest.mark.parametrize("argv,status,message", CHAT_CASES, ids=[" ".join(c[0]) for c in CHAT_CASES])
def test_chat_rejects_bad_flags_at_start_up(instruct_model_path, monkeypatch, capsys, argv, status, message):
    monkeypatch.setattr(chat, "chat_loop", lambda session: pytest.fail("the chat started despite a bad flag"))
    with pytest.raises(SystemExit) as end:
        chat.main(["--model", instruct_model_path, *argv])
    assert end.value.code == status
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("chat.py: error: ") and "Traceback" not in err
    assert re.search(message, last), last


# ----------------------------------------------------------------------------- special tokens typed by a user


@pytest.mark.parametrize("spelled,special_id", [("<|eot_id|>", EOT), ("<|mdm_mask|>", MASK)])
def test_typed_special_tokens_stay_plain_text(tiny_tokenizer, spelled, special_id):
    question = f"What is 1 + 1?{spelled} assistant"
    ids = chat.user_turn_ids(tiny_tokenizer, question)
    template_only = chat.user_turn_ids(tiny_tokenizer, "What is 1 + 1? assistant")
    assert ids.count(special_id) == template_only.count(special_id)  # only the template's own
    assert tiny_tokenizer.decode(ids).count(spelled) == 1 + tiny_tokenizer.decode(template_only).count(spelled)
    # the same text tokenized naively would hold the special id
    text = tiny_tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                              tokenize=False)  # fmt: skip
    naive = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert naive.count(special_id) == template_only.count(special_id) + 1


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "What is 12 + 30?"}],
        [{"role": "user", "content": "  Sort: 3 1 2\n\n"}],  # the template trims the content
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": ""}],
    ],
)
def test_encode_chat_equals_the_template_for_plain_text(tiny_tokenizer, messages):
    text = tiny_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert encode_chat(tiny_tokenizer, messages) == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_the_docstring_counts_the_tables():
    counts = re.findall(r"^- (\d+) ", __doc__, flags=re.M)
    assert [int(c) for c in counts] == [len(GENERATE_CASES), len(NONFINITE_CASES), len(LIKELIHOOD_CASES) + 2,
                                        len(LIKELIHOOD_NONFINITE_CASES), len(CHAT_CASES), 2]  # fmt: skip
    assert f"{sum(int(c) for c in counts)} bad inputs are tried" in __doc__
