"""lm-evaluation-harness adapter for Genjo: the model ``genjo_dist``.

Likelihood tasks use the Monte-Carlo ELBO of ``get_log_likelihood.py``; generation tasks use the
sampler of ``generate.py``. Run it as the lm-eval command line with the model registered:

    python eval_genjo.py --model genjo_dist --tasks hellaswag --batch_size 8 \
        --model_args model_path=/path/to/Genjo-8B-Base,cfg=0.5,mc_num=128,is_check_greedy=False
    accelerate launch eval_genjo.py ...        # data parallel: lm-eval shards the requests by rank

Offline tasks for the embedded models live in ``eval_tasks/`` (``--include_path eval_tasks``);
``evaluate_offline()`` runs them in-process without lm-eval's slow index of built-in tasks.
See EVAL.md and eval_genjo.sh.
"""

import hashlib
import logging
import os
import random
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Optional

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from generate import MASK_ID, REMASKING, _config_id, generate, token_confidence
from genjo.loading import DEFAULT_BASE_MODEL, DEFAULT_MODEL, load_model
from get_log_likelihood import get_log_likelihoods, get_logits

TASKS_DIR = Path(__file__).resolve().parent / "eval_tasks"
SEED = 1234
MAX_SHARED_REQUESTS = 16  # likelihood requests with one context scored in shared forwards
# Keyword arguments lm-eval itself adds to the model arguments; accepted and unused.
LM_EVAL_EXTRAS = ("max_batch_size",)

logger = logging.getLogger(__name__)


def _as_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "t", "yes", "y", "1"):
        return True
    if text in ("false", "f", "no", "n", "0", "none", ""):
        return False
    raise ValueError(f"{name}={value!r} is not a boolean; use True or False.")


def _as_optional(value, cast, name: str):
    """None for None / 'None' / '', else cast(value)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    try:
        return cast(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}={value!r}: {error}") from None


def _as_int(value, name: str) -> int:
    result = _as_optional(value, int, name)
    if result is None or isinstance(value, float) and value != int(value):
        raise ValueError(f"{name}={value!r} must be an integer.")
    return result


def _torch_dtype(name) -> torch.dtype:
    """torch.bfloat16 from 'bfloat16' (or a torch.dtype); 'auto' is None, i.e. the loader's default."""
    if isinstance(name, torch.dtype):
        return name
    if str(name) == "auto":
        return None
    if str(name) not in ("bfloat16", "float16", "float32"):
        raise ValueError("unknown dtype; use bfloat16, float16, float32 or auto.")
    return getattr(torch, str(name))


def set_seed(seed: int = SEED) -> None:
    """Seed Python, NumPy and torch (all devices) and make cuDNN deterministic."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


@register_model("genjo_dist")
class GenjoEvalHarness(LM):
    """A Genjo mask predictor behind lm-eval's ``LM`` interface, single- or multi-process.

    Args (all may arrive as strings from ``--model_args``; they are cast):
        model_path: checkpoint folder or hub id. Default: the embedded instruct model when
            ``chat_template`` is true, else the embedded base model.
        mask_id: the [MASK] id; default the model config's ``mask_token_id``.
        max_length: longest prompt + answer in tokens; default the config's ``max_sequence_length``.
        batch_size: likelihood: Monte-Carlo rows per forward (lowered to mc_num, must divide it);
            generation: prompts per ``generate()`` call (left-padded).
        mc_num: Monte-Carlo samples per likelihood (1 is exact for one-token answers).
        is_check_greedy: also check whether greedy decoding reproduces the continuation (costs one
            forward per continuation token); False reports is_greedy = 0.
        cfg: unsupervised classifier-free guidance scale (likelihood and generation).
        steps, gen_length, block_length, remasking: sampler settings (temperature is always 0).
        logits_eos_inf, confidence_eos_eot_inf, threshold, factor, cache, early_stop: passed to
            ``generate()``; the last four only when set.
        chat_template: render the context as a user turn of the tokenizer's chat template and the
            continuation as the assistant's answer (Instruct models), for both request types.
        device: where the model runs in a single process ('cuda:0' falls back to CPU without CUDA).
            Under ``accelerate launch`` with several processes each process uses its own device.
        dtype: weights dtype ('bfloat16', 'float32', ...); default bf16 on CUDA, fp32 on CPU.
        seed: base of the per-request random seeds (see ``_seed_of``).
    """

    def __init__(
        self,
        model_path: str = "",
        mask_id: Optional[int] = None,
        max_length: Optional[int] = None,
        batch_size: int = 32,
        mc_num: int = 128,
        is_check_greedy: bool = True,
        cfg: float = 0.0,
        steps: int = 1024,
        gen_length: int = 1024,
        block_length: int = 1024,
        remasking: str = "low_confidence",
        device: str = "cuda",
        chat_template: bool = False,
        dtype: Optional[str] = None,
        seed: int = SEED,
        threshold: Optional[float] = None,
        factor: Optional[float] = None,
        cache: Optional[str] = None,
        logits_eos_inf: bool = False,
        confidence_eos_eot_inf: bool = False,
        early_stop: bool = False,
        **kwargs,
    ) -> None:
        super().__init__()
        unknown = sorted(set(kwargs) - set(LM_EVAL_EXTRAS))
        if unknown:
            raise ValueError(f"unknown model argument(s) {', '.join(unknown)}; see GenjoEvalHarness's docstring.")
        self.chat_template = _as_bool(chat_template, "chat_template")
        self.batch_size = _as_int(batch_size, "batch_size")
        self.mc_num = _as_int(mc_num, "mc_num")
        self.is_check_greedy = _as_bool(is_check_greedy, "is_check_greedy")
        self.cfg = _as_optional(cfg, float, "cfg") or 0.0
        self.steps, self.gen_length = _as_int(steps, "steps"), _as_int(gen_length, "gen_length")
        self.block_length = _as_int(block_length, "block_length")
        self.remasking = str(remasking)
        self.logits_eos_inf = _as_bool(logits_eos_inf, "logits_eos_inf")
        self.confidence_eos_eot_inf = _as_bool(confidence_eos_eot_inf, "confidence_eos_eot_inf")
        self.seed = _as_int(seed, "seed")
        # Sampler extras, passed to generate() only when set.
        self.generate_extras = {
            key: value
            for key, value in (
                ("threshold", _as_optional(threshold, float, "threshold")),
                ("factor", _as_optional(factor, float, "factor")),
                ("cache", _as_optional(cache, str, "cache")),
                ("early_stop", _as_bool(early_stop, "early_stop") or None),
            )
            if value is not None
        }
        self._check_settings()

        self.accelerator = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by accelerate launch / torchrun
            from accelerate import Accelerator, InitProcessGroupKwargs

            # Ranks wait for each other at barriers while generating; never time out there.
            accelerator = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(weeks=52))])
            if accelerator.num_processes > 1:
                self.accelerator = accelerator
                self._rank = accelerator.process_index
                self._world_size = accelerator.num_processes
        if self.accelerator is not None:
            self._device = self.accelerator.device
        else:
            self._device = torch.device(str(device))
            if self._device.type == "cuda" and not torch.cuda.is_available():
                logger.warning("CUDA is not available: running on the CPU.")
                self._device = torch.device("cpu")

        self.model_path = str(model_path or (DEFAULT_MODEL if self.chat_template else DEFAULT_BASE_MODEL))
        torch_dtype = _as_optional(dtype, _torch_dtype, "dtype")
        # Not wrapped by accelerator.prepare(): inference needs no DDP, and DDP's per-forward buffer
        # broadcasts would deadlock ranks that run different numbers of forwards.
        self.model, self.tokenizer = load_model(self.model_path, device=self._device, dtype=torch_dtype)
        self.mask_id = (
            _config_id(self.model, "mask_token_id", MASK_ID) if mask_id is None else _as_int(mask_id, "mask_id")
        )
        config_max = _config_id(self.model, "max_sequence_length", 4096)
        self.max_length = config_max if max_length is None else _as_int(max_length, "max_length")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = self.tokenizer.eos_token_id
        if self.tokenizer.pad_token_id == self.mask_id:
            raise ValueError("the tokenizer's pad id equals the mask id; give the tokenizer another pad token.")

    def _check_settings(self) -> None:
        """Fail at construction, not after hours of evaluation."""
        if self.batch_size < 1 or self.mc_num < 1:
            raise ValueError(f"batch_size ({self.batch_size}) and mc_num ({self.mc_num}) must be >= 1.")
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking={self.remasking!r} is unknown; use one of {', '.join(REMASKING)}.")
        if self.cfg < 0:
            raise ValueError(f"cfg ({self.cfg}) must be >= 0.")
        if self.gen_length < 1 or self.block_length < 1 or self.gen_length % self.block_length:
            raise ValueError(f"gen_length ({self.gen_length}) must be a positive multiple of block_length "
                             f"({self.block_length}).")  # fmt: skip
        parallel = "threshold" in self.generate_extras or "factor" in self.generate_extras
        if not parallel and (self.steps < 1 or self.steps % (self.gen_length // self.block_length)):
            raise ValueError(f"steps ({self.steps}) must be a positive multiple of the number of blocks "
                             f"({self.gen_length // self.block_length}).")  # fmt: skip

    # ------------------------------------------------------------------ data parallelism (lm-eval contract)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.accelerator is None:
            return tensor
        return self.accelerator.gather(tensor)

    def gather_object(self, obj, dst: int = 0):
        if self.accelerator is None:
            return [obj]
        result = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    @property
    def tokenizer_name(self) -> str:
        return self.model_path.replace("/", "__")

    # ------------------------------------------------------------------ tokenization

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _chat_prompt(self, question: str) -> str:
        """A single user turn and the assistant header, rendered by the tokenizer's chat template."""
        messages = [{"role": "user", "content": question}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of the context and the continuation (no BOS).

        The context's trailing whitespace moves to the front of the continuation, ``context +
        continuation`` is tokenized as a whole and the continuation is what follows the context's
        tokens. With ``chat_template`` the context is a user turn and the continuation the
        assistant's answer (stripped, as the template strips messages), tokenized separately as in
        supervised fine-tuning.
        """
        if self.chat_template:
            return self._tokens(self._chat_prompt(context)), self._tokens(continuation.strip())
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self._tokens(context + continuation)
        context_ids = self._tokens(context)
        return context_ids, whole[len(context_ids) :]

    def _seed_of(self, *texts: str) -> int:
        """A 63-bit seed from ``seed`` and the texts (SHA-256): the same on every run, process and machine."""
        digest = hashlib.sha256("\x00".join([str(self.seed), *texts]).encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % 2**63

    @contextmanager
    def _seeded(self, *texts: str):
        """Run with the global random state seeded from the texts (restored afterwards)."""
        devices = [self._device.index or 0] if self._device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self._seed_of(*texts))
            yield

    # ------------------------------------------------------------------ likelihood

    @torch.no_grad()
    def suffix_greedy_prediction(self, prefix: torch.Tensor, target: torch.Tensor) -> bool:
        """Whether greedy decoding from prefix + len(target) masks reproduces target exactly.

        One token per forward: the most confident proposal among the masked slots is committed.
        Always False unless ``is_check_greedy``.
        """
        if not self.is_check_greedy:
            return False
        prefix, target = prefix.to(self.device), target.to(self.device)
        seq = torch.full((1, len(prefix) + len(target)), self.mask_id, dtype=torch.long, device=self.device)
        seq[0, : len(prefix)] = prefix
        prompt_index = torch.arange(seq.shape[1], device=self.device) < len(prefix)
        for _ in range(len(target)):
            eligible = (seq[0] == self.mask_id) & ~prompt_index
            logits = get_logits(self.model, seq, prompt_index, self.cfg, self.mask_id)[0]
            x0 = logits.argmax(dim=-1)
            confidence = torch.where(eligible, token_confidence(logits, x0), -torch.inf)
            j = int(confidence.argmax())
            seq[0, j] = x0[j]
        return bool((seq[0, len(prefix) :] == target).all())

    def _encode_request(self, index: int, context: str, continuation: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Context and continuation ids of one likelihood request, checked against ``max_length``."""
        context_ids, continuation_ids = self._encode_pair(context, continuation)
        if not continuation_ids:
            raise ValueError(f"request {index}: the continuation {continuation!r} has no tokens to score.")
        total = len(context_ids) + len(continuation_ids)
        if total > self.max_length:
            raise ValueError(
                f"request {index}: context + continuation are {total} tokens, more than max_length="
                f"{self.max_length}. Use fewer few-shot examples (--num_fewshot) or a model with a longer "
                "max_sequence_length."
            )
        return torch.tensor(context_ids, dtype=torch.long), torch.tensor(continuation_ids, dtype=torch.long)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, float]]:
        """(ELBO of log p(continuation | context), is_greedy) per request, in order.

        Consecutive requests with the same context (the choices of one question) are scored
        together: their Monte-Carlo rows share forwards and their masking noise (common random
        numbers). Requests are tokenized group by group as they are scored, so memory does not grow
        with their number. Raises ValueError when a context + continuation exceeds ``max_length``.
        """
        if self.mc_num % min(self.batch_size, self.mc_num):  # checked here: generation tasks need no mc_num
            raise ValueError(f"batch_size ({self.batch_size}) must divide mc_num ({self.mc_num}) for likelihood "
                             "tasks; e.g. use powers of two.")  # fmt: skip
        results = []
        total = len(requests) if hasattr(requests, "__len__") else None
        progress = tqdm(total=total, desc="Computing likelihood...", disable=disable_tqdm or self.rank != 0)
        group: list = []  # consecutive (index, request) pairs with one context, at most MAX_SHARED_REQUESTS
        for index, request in enumerate(requests):
            if group and (request.args[0] != group[0][1].args[0] or len(group) == MAX_SHARED_REQUESTS):
                results += self._score_group(group)
                progress.update(len(group))
                group = []
            group.append((index, request))
        if group:
            results += self._score_group(group)
            progress.update(len(group))
        progress.close()
        return results

    def _score_group(self, group: list) -> list[tuple[float, float]]:
        """(ll, is_greedy) of (index, request) pairs that share one context, scored in shared forwards."""
        context = group[0][1].args[0]
        pairs = [self._encode_request(index, *request.args) for index, request in group]
        # Noise seeded from the context alone: the choices of a question share their random numbers
        # (lower variance of their comparison), and a result never depends on order, batch or process.
        generators = [torch.Generator().manual_seed(self._seed_of(context)) for _ in pairs]
        lls = get_log_likelihoods(self.model, pairs, mc_num=self.mc_num, batch_size=self.batch_size,
                                  cfg_scale=self.cfg, mask_id=self.mask_id, generators=generators)  # fmt: skip
        scored = []
        for (_, request), (prefix, target), ll in zip(group, pairs, lls):
            greedy = self.suffix_greedy_prediction(prefix, target)
            self.cache_hook.add_partial("loglikelihood", request.args, (ll, greedy))
            scored.append((ll, float(greedy)))
        return scored

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "loglikelihood_rolling (perplexity tasks such as wikitext) is not supported: a masked diffusion "
            "model has no left-to-right factorisation into per-token probabilities, and its ELBO bounds the "
            "likelihood of an answer given a prompt. Use multiple-choice, loglikelihood or generation tasks."
        )

    # ------------------------------------------------------------------ generation

    def _generate_kwargs(self) -> dict:
        return dict(
            steps=self.steps,
            gen_length=self.gen_length,
            block_length=self.block_length,
            temperature=0.0,
            cfg_scale=self.cfg,
            remasking=self.remasking,
            mask_id=self.mask_id,
            logits_eos_inf=self.logits_eos_inf,
            confidence_eos_eot_inf=self.confidence_eos_eot_inf,
            **self.generate_extras,
        )

    def _finish(self, answer_ids: list[int], until: list[str]) -> str:
        """Decode with special tokens, cut at the first occurrence of each stop string in turn, re-encode and
        decode without special tokens."""
        text = self.tokenizer.decode(answer_ids, skip_special_tokens=False)
        for stop in until:
            if stop:
                text = text.split(stop)[0]
        return self.tokenizer.decode(self._tokens(text), skip_special_tokens=True)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Answer each request's context with ``generate()`` (temperature 0) and cut at its stop strings.

        Prompts are sorted by length and run ``batch_size`` at a time, left-padded with attention
        masks (each row gets the tokens it would get alone); answers come back in request order.
        """
        prompts, stops = [], []
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            until = (gen_kwargs or {}).get("until") or []
            stops.append([until] if isinstance(until, str) else list(until))
            ids = self._tokens(self._chat_prompt(context) if self.chat_template else context)
            if not ids:
                raise ValueError(f"request {index}: the context is empty; generation needs a prompt.")
            if len(ids) + self.gen_length > self.max_length:
                raise ValueError(
                    f"request {index}: prompt ({len(ids)} tokens) + gen_length ({self.gen_length}) exceed "
                    f"max_length={self.max_length}. Use fewer few-shot examples or a smaller gen_length."
                )
            prompts.append(ids)

        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first: OOM shows early
        answers: list[Optional[str]] = [None] * len(prompts)
        pad = self.tokenizer.pad_token_id
        progress = tqdm(total=len(prompts), desc="Generating...", disable=disable_tqdm or self.rank != 0)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(prompts[i]) for i in batch)
            rows = [[pad] * (width - len(prompts[i])) + prompts[i] for i in batch]
            mask = [[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch]
            prompt = torch.tensor(rows, dtype=torch.long, device=self.device)
            attention_mask = torch.tensor(mask, dtype=torch.long, device=self.device)
            if bool(attention_mask.all()):
                attention_mask = None  # no padding: the unbatched path
            with self._seeded(*(str(i) for i in batch)):  # only remasking='random' draws random numbers
                out = generate(self.model, prompt, attention_mask, **self._generate_kwargs())
            for row, i in zip(out[:, width:].tolist(), batch):
                answers[i] = self._finish(row, stops[i])
                self.cache_hook.add_partial("generate_until", requests[i].args, answers[i])
            progress.update(len(batch))
        progress.close()
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        return answers


def evaluate_offline(tasks, model_args: Optional[dict] = None, limit=None, log_samples: bool = False, lm=None,
                     **kwargs) -> Optional[dict]:  # fmt: skip
    """Run offline tasks of ``eval_tasks/`` with lm-eval's own runner, in this process.

    Builds ``TaskManager(include_path=eval_tasks, include_defaults=False)``, which skips lm-eval's
    index of its ~15k built-in tasks (about 17 s per process). ``model_args``: constructor
    arguments of GenjoEvalHarness, or ``lm``: a GenjoEvalHarness already built. Other keyword
    arguments go to ``lm_eval.simple_evaluate``. Returns its dict (on rank 0; None on other ranks).
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=[str(TASKS_DIR)], include_defaults=False)
    kwargs.setdefault("bootstrap_iters", 0)
    return lm_eval.simple_evaluate(
        model=lm if lm is not None else "genjo_dist",
        model_args=None if lm is not None else dict(model_args or {}),
        tasks=list(tasks),
        task_manager=task_manager,
        limit=limit,
        log_samples=log_samples,
        **kwargs,
    )


def main() -> None:
    """The lm-eval command line with ``genjo_dist`` registered, seeded as the reference."""
    from lm_eval.__main__ import cli_evaluate

    set_seed(SEED)
    cli_evaluate()


if __name__ == "__main__":
    main()
