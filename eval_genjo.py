"""lm-evaluation-harness adapter for Genjo: the model ``genjo_dist``.

Likelihood tasks use the Monte-Carlo ELBO of ``get_log_likelihood.py``; generation tasks use the
sampler of ``generate.py``. Run it as the lm-eval command line with the model registered:

    python eval_genjo.py --model genjo_dist --tasks hellaswag --batch_size 8 \
        --model_args model_path=/path/to/Genjo-8B-Base,cfg=0.5,mc_num=128,is_check_greedy=False
    python eval_genjo.py --model genjo_dist --tasks gsm8k --apply_chat_template --fewshot_as_multiturn \
        --model_args model_path=/path/to/Genjo-8B-Instruct,gen_length=512,steps=512,block_length=512
    accelerate launch eval_genjo.py ...        # data parallel: lm-eval shards the requests by rank

Instruct models go through lm-eval's own chat path (``apply_chat_template``): few-shot examples as
chat turns, a task's ``gen_prefix`` as the open start of the assistant's answer.

Offline tasks for the embedded models live in ``eval_tasks/`` (``--include_path eval_tasks``);
``evaluate_offline()`` runs them in-process without lm-eval's slow index of built-in tasks.
See EVAL.md and eval_genjo.sh.
"""

import logging
import math
import os
import random
import time
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Optional

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from genjo.batch_generation import derive_seed, seeded
from genjo.chat_format import chat_pieces, encode_pieces
from genjo.checks import config_int
from genjo.likelihood import get_log_likelihoods, get_logits
from genjo.loading import DEFAULT_BASE_MODEL, load_model
from genjo.sampling import GenerationStats, check_sampler_settings, generate, token_confidence

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


def _as_float(value, name: str) -> float:
    """A float from a number or a string; None / 'None' is 0.0."""
    result = _as_optional(value, float, name)
    return 0.0 if result is None else result


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


class ChatPrompt(str):
    """A prompt rendered by the chat template that remembers which characters the template wrote.

    It is an ordinary ``str`` to lm-eval (logged, hashed and passed back as the request's context);
    ``pieces`` is ``((text, from_template), ...)`` whose texts concatenate to the string. Only the
    template's pieces may hold special tokens: a message that spells ``<|eot_id|>`` or the mask token
    is tokenized as plain text (``genjo.chat_format.encode_pieces``).
    """

    pieces: tuple[tuple[str, bool], ...]

    def __new__(cls, pieces):
        pieces = tuple((str(text), bool(template)) for text, template in pieces if text)
        prompt = super().__new__(cls, "".join(text for text, _ in pieces))
        prompt.pieces = pieces
        return prompt

    def __reduce__(self):  # pickling (lm-eval's request cache) and deepcopy keep the pieces
        return (ChatPrompt, (self.pieces,))


def _preview(text: str, width: int = 60) -> str:
    """The start of a request's text, for error messages."""
    text = str(text)
    return repr(text[:width] + ("..." if len(text) > width else ""))


@register_model("genjo_dist")
class GenjoEvalHarness(LM):
    """A Genjo mask predictor behind lm-eval's ``LM`` interface, single- or multi-process.

    Instruct models use lm-eval's own chat path: ``--apply_chat_template`` (and
    ``--fewshot_as_multiturn``) make lm-eval build the messages and call ``apply_chat_template``;
    a task's ``gen_prefix`` becomes the start of the assistant's answer, which the model continues.

    Args (all may arrive as strings from ``--model_args``; they are cast and checked here, so a bad
    setting is a ValueError at construction, not at the first request):
        model_path: checkpoint folder or hub id; default the embedded base model.
        mask_id: the [MASK] id; default the model config's ``mask_token_id``.
        max_length: longest prompt + answer in tokens; default the config's ``max_sequence_length``.
        batch_size: likelihood: Monte-Carlo rows per forward (lowered to mc_num, must divide it);
            generation: prompts per ``generate()`` call (left-padded).
        mc_num: Monte-Carlo samples per likelihood (1 is exact for one-token answers).
        is_check_greedy: also check whether greedy decoding reproduces the continuation (costs one
            forward per continuation token); False reports is_greedy = 0.
        cfg: unsupervised classifier-free guidance scale (likelihood and generation).
        steps, gen_length, block_length, remasking, temperature: sampler settings. A task's
            ``max_gen_toks`` below gen_length shortens the answer to whole blocks (steps per block kept).
        logits_eos_inf, confidence_eos_eot_inf, threshold, factor, cache, early_stop: passed to
            ``generate()``; the last four only when set.
        device: where the model runs in a single process ('cuda:0' falls back to CPU without CUDA).
            Under ``accelerate launch`` with several processes each process uses its own device.
        dtype: weights dtype ('bfloat16', 'float32', ...); default bf16 on CUDA, fp32 on CPU.
        device_map: 'auto' (or 'balanced', 'sequential') splits or offloads the model with accelerate's
            big-model loading (a single process only; replaces ``device``); default none.
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
        temperature: float = 0.0,
        device: str = "cuda",
        dtype: Optional[str] = None,
        seed: int = SEED,
        threshold: Optional[float] = None,
        factor: Optional[float] = None,
        cache: Optional[str] = None,
        logits_eos_inf: bool = False,
        confidence_eos_eot_inf: bool = False,
        early_stop: bool = False,
        device_map: Optional[str] = None,
        **kwargs,
    ) -> None:
        super().__init__()
        if "chat_template" in kwargs:
            raise ValueError(
                "chat_template is not a model argument: use lm-eval's own chat path, --apply_chat_template "
                "(simple_evaluate(apply_chat_template=True)) and optionally --fewshot_as_multiturn, with "
                "model_path=<an instruct model>."
            )
        unknown = sorted(set(kwargs) - set(LM_EVAL_EXTRAS))
        if unknown:
            raise ValueError(f"unknown model argument(s) {', '.join(unknown)}; see GenjoEvalHarness's docstring.")
        self.batch_size = _as_int(batch_size, "batch_size")
        self.mc_num = _as_int(mc_num, "mc_num")
        self.is_check_greedy = _as_bool(is_check_greedy, "is_check_greedy")
        self.cfg = _as_float(cfg, "cfg")
        self.steps, self.gen_length = _as_int(steps, "steps"), _as_int(gen_length, "gen_length")
        self.block_length = _as_int(block_length, "block_length")
        self.remasking = str(remasking)
        self.temperature = _as_float(temperature, "temperature")
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

        self.model_path = str(model_path or DEFAULT_BASE_MODEL)
        torch_dtype = _as_optional(dtype, _torch_dtype, "dtype")
        # Not wrapped by accelerator.prepare(): inference needs no DDP, and DDP's per-forward buffer
        # broadcasts would deadlock ranks that run different numbers of forwards.
        device_map = _as_optional(device_map, str, "device_map")
        if device_map is not None and self.accelerator is not None:
            raise ValueError("device_map splits one model over the GPUs of one process; under accelerate launch "
                             "with several processes each process holds a whole model: drop device_map.")  # fmt: skip
        if device_map is None:
            self.model, self.tokenizer = load_model(self.model_path, device=self._device, dtype=torch_dtype)
        else:
            self.model, self.tokenizer = load_model(self.model_path, dtype=torch_dtype, device_map=device_map)
            self._device = self.model.device  # the input ids go where the embedding is
        self.mask_id = (
            config_int(self.model, "mask_token_id") if mask_id is None else _as_int(mask_id, "mask_id")
        )
        config_max = config_int(self.model, "max_sequence_length", 4096)
        self.max_length = config_max if max_length is None else _as_int(max_length, "max_length")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = self.tokenizer.eos_token_id
        self._check_model_settings()
        # Text after the end of an answer is never part of it (as lm-eval's HF model stops at EOS).
        self._stop_tokens = [
            self.tokenizer.convert_ids_to_tokens(i)
            for i in dict.fromkeys(
                (config_int(self.model, "eos_token_id", -1), config_int(self.model, "eot_token_id", -1))
            )
            if 0 <= i < len(self.tokenizer)
        ]
        self._forwards = 0  # model calls, for the speed report
        self.model.register_forward_hook(self._count_forward)
        self.speed: dict[str, dict] = {}  # per task: requests, seconds, forwards, answer tokens (all ranks)

    def _check_settings(self) -> None:
        """Fail at construction, not after hours of evaluation: the sampler's own rules, up front."""
        for name in ("cfg", "temperature", "threshold", "factor"):
            value = getattr(self, name, None) if name in ("cfg", "temperature") else self.generate_extras.get(name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name}={value} is not a finite number.")
        if self.batch_size < 1 or self.mc_num < 1:
            raise ValueError(f"batch_size ({self.batch_size}) and mc_num ({self.mc_num}) must be >= 1.")
        if self.cfg < 0:
            raise ValueError(f"cfg ({self.cfg}) must be >= 0.")
        # The sampler's own checks, before the model loads (no model: its vocabulary is checked later).
        extras = self.generate_extras
        check_sampler_settings(None, steps=self.steps, gen_length=self.gen_length, block_length=self.block_length,
                               temperature=self.temperature, cfg_scale=self.cfg, remasking=self.remasking,
                               threshold=extras.get("threshold"), factor=extras.get("factor"),
                               cache=extras.get("cache"))  # fmt: skip

    def _check_model_settings(self) -> None:
        """The settings that need the loaded model and tokenizer."""
        vocab = config_int(self.model, "vocab_size", len(self.tokenizer))
        if not 0 <= self.mask_id < vocab:
            raise ValueError(f"mask_id ({self.mask_id}) is outside the model's vocabulary (0..{vocab - 1}); leave "
                             "it unset to use the config's mask_token_id.")  # fmt: skip
        if self.max_length < 2:
            raise ValueError(f"max_length ({self.max_length}) must be >= 2.")
        if self.tokenizer.pad_token_id == self.mask_id:
            raise ValueError("the tokenizer's pad id equals the mask id; give the tokenizer another pad token.")

    @property
    def _random(self) -> bool:
        """Whether generation draws random numbers (then each request runs alone, seeded from its text)."""
        return self.remasking == "random" or self.temperature > 0

    def _count_forward(self, module, args, output) -> None:
        self._forwards += 1

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

    # ------------------------------------------------------------------ chat interface (lm-eval contract)

    @property
    def tokenizer_name(self) -> str:
        """Part of lm-eval's request-cache key under --apply_chat_template."""
        return self.model_path.replace("/", "__")

    def chat_template(self, chat_template=False) -> Optional[str]:
        """The tokenizer's chat template (lm-eval logs it and its hash), or None when not applied."""
        if chat_template is False or chat_template is None:
            return None
        template = self.tokenizer.chat_template
        if template is None:
            raise ValueError(f"{self.model_path}'s tokenizer has no chat template: --apply_chat_template needs "
                             "an instruct model.")  # fmt: skip
        return template

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> ChatPrompt:
        """Render lm-eval's messages with the tokenizer's chat template, as lm-eval's HF model does.

        ``add_generation_prompt=False`` (a task's ``gen_prefix``): the last message is the start of
        the assistant's answer and is left open (``continue_final_message``), so the answer is
        generated, or scored, as its continuation. Returns a ``ChatPrompt``: the rendered string,
        which knows the template's pieces from the messages' text (``genjo.chat_format.chat_pieces``).
        """
        import jinja2

        options = dict(add_generation_prompt=add_generation_prompt, continue_final_message=not add_generation_prompt)
        if self.tokenizer.chat_template is None:
            self.chat_template(True)  # the clear error
        try:
            pieces = chat_pieces(self.tokenizer, chat_history, **options)
        except jinja2.exceptions.TemplateError:  # as lm-eval's HF model: retry without the system turn
            logger.warning("The chat template failed; retrying without the system message.")
            chat_history = [message for message in chat_history if message["role"] != "system"]
            pieces = chat_pieces(self.tokenizer, chat_history, **options)
        return ChatPrompt(pieces)

    # ------------------------------------------------------------------ tokenization

    def _encode(self, pieces) -> list[int]:
        """Ids of a prompt: a ChatPrompt, a plain string (all text), or a list of (text, from_template)
        pieces; special tokens are read only in the template's pieces (``genjo.chat_format.encode_pieces``)."""
        if isinstance(pieces, str):
            pieces = pieces.pieces if isinstance(pieces, ChatPrompt) else [(pieces, False)]
        return encode_pieces(self.tokenizer, pieces, self.mask_id)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of the context and the continuation (no BOS), as lm-eval's HF model splits them.

        Trailing whitespace of the context's text moves to the front of the continuation (never
        the whitespace a chat template wrote, such as the newlines after the assistant header);
        context + continuation is tokenized as a whole and the continuation is what follows the
        context's tokens.
        """
        pieces = list(context.pieces) if isinstance(context, ChatPrompt) else [(str(context), False)]
        if pieces and not pieces[-1][1]:
            text = pieces[-1][0]
            n_spaces = len(text) - len(text.rstrip())
            if n_spaces:
                pieces[-1] = (text[:-n_spaces], False)
                continuation = text[-n_spaces:] + continuation
        context_ids = self._encode(pieces)
        whole = self._encode(pieces + [(continuation, False)])
        return context_ids, whole[len(context_ids) :]

    def _seed_of(self, *texts: str) -> int:
        """A 63-bit seed from ``seed`` and the texts (SHA-256): the same on every run, process and machine."""
        return derive_seed(self.seed, *texts)

    def _seeded(self, *texts: str):
        """Run with the global random state seeded from the texts (restored afterwards)."""
        return seeded(self._seed_of(*texts), self._device)

    # ------------------------------------------------------------------ speed report

    def _record(self, stats: dict, task: Optional[str], seconds: float, forwards: float, tokens: float = 0) -> None:
        row = stats.setdefault(str(task), dict(requests=0, seconds=0.0, forwards=0.0, tokens=0.0))
        row["requests"] += 1
        row["seconds"] += seconds
        row["forwards"] += forwards
        row["tokens"] += tokens

    def _merge_speed(self, stats: dict, kind: str) -> None:
        """Add one call's per-task numbers (summed over ranks; seconds: the slowest rank) to ``speed``."""
        if self.accelerator is not None:
            every = [None] * self.world_size
            torch.distributed.all_gather_object(every, stats)
        else:
            every = [stats]
        for task in sorted({task for rank_stats in every for task in rank_stats}):
            rows = [rank_stats[task] for rank_stats in every if task in rank_stats]
            total = self.speed.setdefault(task, dict(kind=kind, requests=0, seconds=0.0, forwards=0.0, tokens=0.0))
            for key in ("requests", "forwards", "tokens"):
                total[key] += sum(row[key] for row in rows)
            total["seconds"] += max(row["seconds"] for row in rows)

    def speed_report(self) -> dict:
        """Per task: requests, seconds, requests/s, mean forwards (NFE) per request and, for generation,
        answer tokens committed per forward."""
        report = {}
        for task, row in self.speed.items():
            n, forwards = row["requests"], row["forwards"]
            report[task] = dict(
                type=row["kind"],
                requests=n,
                seconds=round(row["seconds"], 3),
                requests_per_s=round(n / row["seconds"], 4) if row["seconds"] > 0 else None,
                mean_nfe=round(forwards / n, 3) if n else None,
                tokens_per_forward=round(row["tokens"] / forwards, 3) if row["kind"] == "generate_until"
                and forwards else None,
            )  # fmt: skip
        return report

    def get_model_info(self) -> dict:
        """lm-eval calls this once after the evaluation (rank 0) and saves it in the results' config:
        the speed of each task, which is also printed here."""
        report = self.speed_report()
        if report:
            lines = ["", "Genjo speed per task (all processes; NFE = forwards per request):",
                     "| Task | Type | Requests | Seconds | Requests/s | Mean NFE | Tokens/forward |",
                     "|---|---|---|---|---|---|---|"]  # fmt: skip
            for task, r in report.items():
                lines.append(f"| {task} | {r['type']} | {r['requests']} | {r['seconds']:.1f} | "
                             f"{r['requests_per_s'] or 0:.3f} | {r['mean_nfe'] or 0:.1f} | "
                             f"{'' if r['tokens_per_forward'] is None else r['tokens_per_forward']} |")  # fmt: skip
            print("\n".join(lines), flush=True)
        return {"genjo_speed": report, "model_path": self.model_path}

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
            raise ValueError(f"request {index} (context {_preview(context)}): the continuation {continuation!r} "
                             "has no tokens to score.")  # fmt: skip
        total = len(context_ids) + len(continuation_ids)
        if total > self.max_length:
            raise ValueError(
                f"request {index} (context {_preview(context)}): context + continuation are {total} tokens, "
                f"more than max_length={self.max_length}. Use fewer few-shot examples (--num_fewshot) or a "
                "model with a longer max_sequence_length."
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
        results, stats = [], {}
        total = len(requests) if hasattr(requests, "__len__") else None
        progress = tqdm(total=total, desc="Computing likelihood...", disable=disable_tqdm or self.rank != 0)
        group: list = []  # consecutive (index, request) pairs with one context, at most MAX_SHARED_REQUESTS
        for index, request in enumerate(requests):
            if group and (request.args[0] != group[0][1].args[0] or len(group) == MAX_SHARED_REQUESTS):
                results += self._score_group(group, stats)
                progress.update(len(group))
                group = []
            group.append((index, request))
        if group:
            results += self._score_group(group, stats)
            progress.update(len(group))
        progress.close()
        self._merge_speed(stats, "loglikelihood")
        return results

    def _score_group(self, group: list, stats: dict) -> list[tuple[float, float]]:
        """(ll, is_greedy) of (index, request) pairs that share one context, scored in shared forwards."""
        started, forwards = time.perf_counter(), self._forwards
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
        share = 1 / len(group)
        seconds, forwards = (time.perf_counter() - started) * share, (self._forwards - forwards) * share
        for _, request in group:
            self._record(stats, getattr(request, "task_name", None), seconds, forwards)
        return scored

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "loglikelihood_rolling (perplexity tasks such as wikitext) is not supported: a masked diffusion "
            "model has no left-to-right factorisation into per-token probabilities, and its ELBO bounds the "
            "likelihood of an answer given a prompt. Use multiple-choice, loglikelihood or generation tasks."
        )

    # ------------------------------------------------------------------ generation

    def _answer_length(self, gen_kwargs: dict) -> int:
        """gen_length, or the task's max_gen_toks rounded up to whole blocks when that is smaller."""
        max_gen_toks = gen_kwargs.get("max_gen_toks")
        if max_gen_toks is None:
            return self.gen_length
        max_gen_toks = _as_int(max_gen_toks, "max_gen_toks")
        blocks = max(1, -(-max_gen_toks // self.block_length))
        return min(self.gen_length, blocks * self.block_length)

    def _generate_kwargs(self, gen_length: int) -> dict:
        # The same steps per block as the full setting when a task asks for fewer blocks.
        steps = self.steps * (gen_length // self.block_length) // (self.gen_length // self.block_length)
        return dict(
            steps=steps,
            gen_length=gen_length,
            block_length=self.block_length,
            temperature=self.temperature,
            cfg_scale=self.cfg,
            remasking=self.remasking,
            mask_id=self.mask_id,
            logits_eos_inf=self.logits_eos_inf,
            confidence_eos_eot_inf=self.confidence_eos_eot_inf,
            **self.generate_extras,
        )

    def _finish(self, answer_ids: list[int], until: list[str]) -> str:
        """Decode with special tokens, cut at the first occurrence of each stop string in turn (and at
        the end of text / end of turn), then drop special tokens."""
        text = self.tokenizer.decode(answer_ids, skip_special_tokens=False)
        for stop in [*until, *self._stop_tokens]:
            if stop:
                text = text.split(stop)[0]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]  # the model's own special tokens
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Answer each request's context with ``generate()`` and cut at its stop strings.

        Prompts of one answer length are sorted by length and run ``batch_size`` at a time,
        left-padded with attention masks (each row gets the tokens it would get alone); answers come
        back in request order. With remasking='random' or temperature > 0 each request runs alone
        with the random state seeded from its context (and its occurrence, for repeated requests), so
        answers do not depend on the batch size or the number of processes.
        """
        prompts, stops, lengths, seeds, seen = [], [], [], [], {}
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            gen_kwargs = gen_kwargs or {}
            until = gen_kwargs.get("until") or []
            stops.append([until] if isinstance(until, str) else list(until))
            ids = self._encode(context)
            if not ids:
                raise ValueError(f"request {index}: the context is empty; generation needs a prompt.")
            length = self._answer_length(gen_kwargs)
            if len(ids) + length > self.max_length:
                raise ValueError(
                    f"request {index} (context {_preview(context)}): prompt ({len(ids)} tokens) + answer "
                    f"({length}) exceed max_length={self.max_length}. Use fewer few-shot examples or a smaller "
                    "gen_length."
                )
            prompts.append(ids)
            lengths.append(length)
            seen[context] = seen.get(context, -1) + 1
            seeds.append((str(context), str(seen[context])))

        # Longest answers and prompts first: an out-of-memory error shows early.
        order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], -len(prompts[i])))
        batch_size = 1 if self._random else self.batch_size
        batches, current = [], []
        for i in order:
            if current and (len(current) == batch_size or lengths[current[0]] != lengths[i]):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)

        answers: list[Optional[str]] = [None] * len(prompts)
        pad, stats = self.tokenizer.pad_token_id, {}
        progress = tqdm(total=len(prompts), desc="Generating...", disable=disable_tqdm or self.rank != 0)
        for batch in batches:
            started = time.perf_counter()
            width = max(len(prompts[i]) for i in batch)
            rows = [[pad] * (width - len(prompts[i])) + prompts[i] for i in batch]
            mask = [[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch]
            prompt = torch.tensor(rows, dtype=torch.long, device=self.device)
            attention_mask = torch.tensor(mask, dtype=torch.long, device=self.device)
            if bool(attention_mask.all()):
                attention_mask = None  # no padding: the unbatched path
            run = GenerationStats()
            with self._seeded(*seeds[batch[0]]) if self._random else nullcontext():
                out = generate(
                    self.model, prompt, attention_mask, stats=run, **self._generate_kwargs(lengths[batch[0]])
                )
            seconds = (time.perf_counter() - started) / len(batch)
            tokens = sum(run.committed_per_step) / len(batch)
            for row, i in zip(out[:, width:].tolist(), batch):
                answers[i] = self._finish(row, stops[i])
                self.cache_hook.add_partial("generate_until", requests[i].args, answers[i])
                self._record(stats, getattr(requests[i], "task_name", None), seconds, run.nfe, tokens)
            progress.update(len(batch))
        progress.close()
        self._merge_speed(stats, "generate_until")  # also the ranks' meeting point before lm-eval gathers
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
