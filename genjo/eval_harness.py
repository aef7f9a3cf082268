"""Genjo behind lm-evaluation-harness's ``LM`` interface: how each request type is answered.

Likelihood requests get the Monte-Carlo ELBO of ``genjo.likelihood``; generation requests get the sampler
of ``genjo.sampling``; chat prompts are built by ``genjo.chat_format``. The model_args are parsed and checked
by ``genjo.eval_settings``. ``eval_genjo.py`` registers the class as lm-eval's model ``genjo_dist`` and is
the command line; this module needs the optional dependency lm-eval (``pip install genjo[eval]``).
"""

import logging
import os
import time
from contextlib import nullcontext
from datetime import timedelta
from typing import Optional

import torch
from lm_eval.api.model import LM
from tqdm.auto import tqdm

from .batch_generation import derive_seed, seeded
from .chat_format import chat_pieces, encode_pieces
from .checks import config_int
from .eval_settings import as_int, parse_model_args, resolve_harness_sampler
from .likelihood import get_log_likelihoods, get_logits
from .loading import load_model
from .sampling import GenerationStats, generate, token_confidence
from .settings import is_stochastic

MAX_SHARED_REQUESTS = 16  # likelihood requests with one context scored in shared forwards

logger = logging.getLogger(__name__)
# lm-eval warns, for every task built from a ``custom_dataset`` (all of eval_tasks/), that custom kwargs can be
# passed with --metadata: these tasks take none, and the hint repeats once per task and process.
CUSTOM_DATASET_HINT = "Custom kwargs can be passed to `--metadata`"


def quiet_custom_dataset_hint() -> None:
    """Drop lm-eval's repeated custom-dataset hint (only that message; every other warning stays)."""
    task_logger = logging.getLogger("lm_eval.api.task")
    if not any(getattr(f, "drops_custom_dataset_hint", False) for f in task_logger.filters):
        hint_filter = logging.Filter()
        hint_filter.filter = lambda record: CUSTOM_DATASET_HINT not in record.getMessage()
        hint_filter.drops_custom_dataset_hint = True
        task_logger.addFilter(hint_filter)


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


def preview(text: str, width: int = 60) -> str:
    """The start of a request's text, for error messages."""
    text = str(text)
    return repr(text[:width] + ("..." if len(text) > width else ""))


class SpeedMeter:
    """Per task: requests, seconds, forwards (NFE) and, for generation, answer tokens; over all processes.

    Each request-handling call collects its own numbers with ``record`` and adds them with ``merge``, which
    is also where the processes meet (seconds: the slowest process's).
    """

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.totals: dict[str, dict] = {}

    @staticmethod
    def record(stats: dict, task: Optional[str], seconds: float, forwards: float, tokens: float = 0) -> None:
        row = stats.setdefault(str(task), dict(requests=0, seconds=0.0, forwards=0.0, tokens=0.0))
        row["requests"] += 1
        row["seconds"] += seconds
        row["forwards"] += forwards
        row["tokens"] += tokens

    def merge(self, stats: dict, kind: str) -> None:
        """Add one call's per-task numbers (summed over processes; seconds: the slowest one's)."""
        if self.accelerator is not None:
            every = [None] * self.accelerator.num_processes
            torch.distributed.all_gather_object(every, stats)
        else:
            every = [stats]
        for task in sorted({task for process_stats in every for task in process_stats}):
            rows = [process_stats[task] for process_stats in every if task in process_stats]
            total = self.totals.setdefault(task, dict(kind=kind, requests=0, seconds=0.0, forwards=0.0, tokens=0.0))
            for key in ("requests", "forwards", "tokens"):
                total[key] += sum(row[key] for row in rows)
            total["seconds"] += max(row["seconds"] for row in rows)

    def report(self) -> dict:
        """Per task: requests, seconds, requests/s, mean forwards (NFE) per request and, for generation,
        answer tokens committed per forward."""
        report = {}
        for task, row in self.totals.items():
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

    def table(self) -> str:
        """The report as a markdown table, '' when nothing ran."""
        report = self.report()
        if not report:
            return ""
        lines = ["Genjo speed per task (all processes; NFE = forwards per request):",
                 "| Task | Type | Requests | Seconds | Requests/s | Mean NFE | Tokens/forward |",
                 "|---|---|---|---|---|---|---|"]  # fmt: skip
        for task, r in report.items():
            lines.append(f"| {task} | {r['type']} | {r['requests']} | {r['seconds']:.1f} | "
                         f"{r['requests_per_s'] or 0:.3f} | {r['mean_nfe'] or 0:.1f} | "
                         f"{'' if r['tokens_per_forward'] is None else r['tokens_per_forward']} |")  # fmt: skip
        return "\n".join(lines)


def start_processes():
    """An ``accelerate.Accelerator`` when started by ``accelerate launch`` / torchrun with several processes,
    else None (a single process synchronises nothing)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator, InitProcessGroupKwargs

    # Ranks wait for each other at barriers while generating; never time out there.
    accelerator = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(weeks=52))])
    return accelerator if accelerator.num_processes > 1 else None


class GenjoEvalHarness(LM):
    """A Genjo mask predictor behind lm-eval's ``LM`` interface, single- or multi-process.

    Instruct models use lm-eval's own chat path: ``--apply_chat_template`` (and
    ``--fewshot_as_multiturn``) make lm-eval build the messages and call ``apply_chat_template``;
    a task's ``gen_prefix`` becomes the start of the assistant's answer, which the model continues.

    model_args: lm-eval's ``--model_args`` as keyword arguments (strings or literals), cast and checked by
        ``genjo.eval_settings.parse_model_args`` before the model loads, so a bad one is a ValueError at
        construction, not at the first request. The harness's own (model_path, batch_size, mc_num,
        is_check_greedy, max_length, mask_id, device, dtype, device_map, seed) are the fields of
        ``HarnessArguments``; the sampler settings are those of ``genjo.settings.SAMPLER_SETTINGS`` (``cfg=``
        or ``cfg_scale=``, ``steps=``, ...). A sampler setting left unset takes the checkpoint's
        ``sampler_defaults``, else the table's fallback, once the model has loaded (``self.sampler``).
    """

    def __init__(self, **model_args) -> None:
        super().__init__()
        args = parse_model_args(model_args)
        self.model_path = args.model_path
        self.batch_size, self.mc_num, self.seed = args.batch_size, args.mc_num, args.seed
        self.is_check_greedy = args.is_check_greedy

        self.accelerator = start_processes()
        if self.accelerator is not None:
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
            self._device = self.accelerator.device
        else:
            self._device = torch.device(args.device)
            if self._device.type == "cuda" and not torch.cuda.is_available():
                logger.warning("CUDA is not available: running on the CPU.")
                self._device = torch.device("cpu")

        # Not wrapped by accelerator.prepare(): inference needs no DDP, and DDP's per-forward buffer
        # broadcasts would deadlock ranks that run different numbers of forwards.
        if args.device_map is None:
            self.model, self.tokenizer = load_model(self.model_path, device=self._device, dtype=args.dtype,
                                                    context_length=args.context_length,
                                                    rope_scaling=args.rope_scaling)  # fmt: skip
        elif self.accelerator is not None:
            raise ValueError("device_map splits one model over the GPUs of one process; under accelerate launch "
                             "with several processes each process holds a whole model: drop device_map.")  # fmt: skip
        else:
            self.model, self.tokenizer = load_model(self.model_path, dtype=args.dtype, device_map=args.device_map,
                                                    context_length=args.context_length,
                                                    rope_scaling=args.rope_scaling)  # fmt: skip
            self._device = self.model.device  # the input ids go where the embedding is
        self.mask_id = config_int(self.model, "mask_token_id") if args.mask_id is None else args.mask_id
        self.max_length = args.max_length or config_int(self.model, "max_sequence_length", 4096)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = self.tokenizer.eos_token_id
        self.check_mask_id()
        # generate()'s keyword arguments: the given settings, else the checkpoint's, else the table's fallbacks.
        self.sampler = resolve_harness_sampler(args.sampler, self.model, self.mask_id)

        # Text after the end of an answer is never part of it (as lm-eval's HF model stops at EOS).
        self.stop_tokens = [
            self.tokenizer.convert_ids_to_tokens(i)
            for i in dict.fromkeys(
                (config_int(self.model, "eos_token_id", -1), config_int(self.model, "eot_token_id", -1))
            )
            if 0 <= i < len(self.tokenizer)
        ]
        self.forwards = 0  # model calls, for the speed report
        self.model.register_forward_hook(self.count_forward)
        self.speed = SpeedMeter(self.accelerator)

    def check_mask_id(self) -> None:
        """The mask id must be a token of the loaded model's vocabulary, and not the padding."""
        vocab = config_int(self.model, "vocab_size", len(self.tokenizer))
        if not 0 <= self.mask_id < vocab:
            raise ValueError(f"mask_id ({self.mask_id}) is outside the model's vocabulary (0..{vocab - 1}); leave "
                             "it unset to use the config's mask_token_id.")  # fmt: skip
        if self.tokenizer.pad_token_id == self.mask_id:
            raise ValueError("the tokenizer's pad id equals the mask id; give the tokenizer another pad token.")

    def count_forward(self, module, args, output) -> None:
        self.forwards += 1

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

    def encode_prompt(self, pieces) -> list[int]:
        """Ids of a prompt: a ChatPrompt, a plain string (all text), or a list of (text, from_template)
        pieces; special tokens are read only in the template's pieces (``genjo.chat_format.encode_pieces``)."""
        if isinstance(pieces, str):
            pieces = pieces.pieces if isinstance(pieces, ChatPrompt) else [(pieces, False)]
        return encode_pieces(self.tokenizer, pieces, self.mask_id)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
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
        context_ids = self.encode_prompt(pieces)
        whole = self.encode_prompt(pieces + [(continuation, False)])
        return context_ids, whole[len(context_ids) :]

    def seed_of(self, *texts: str) -> int:
        """A 63-bit seed from ``seed`` and the texts (SHA-256): the same on every run, process and machine."""
        return derive_seed(self.seed, *texts)

    # ------------------------------------------------------------------ speed report

    def speed_report(self) -> dict:
        """Per task: requests, seconds, requests/s, mean NFE and, for generation, tokens per forward."""
        return self.speed.report()

    def get_model_info(self) -> dict:
        """lm-eval calls this once after the evaluation (rank 0) and saves it in the results' config: the
        speed of each task (also printed here) and the sampler settings used."""
        table = self.speed.table()
        if table:
            print("\n" + table, flush=True)
        return {"genjo_speed": self.speed.report(), "model_path": self.model_path, "genjo_sampler": self.sampler}

    # ------------------------------------------------------------------ likelihood

    @torch.no_grad()
    def suffix_greedy_prediction(self, prefix: torch.Tensor, target: torch.Tensor) -> bool:
        """Whether greedy decoding from prefix + len(target) masks reproduces target exactly.

        prefix, target: 1-D int64 token ids. One token per forward: the most confident proposal among the
        masked slots is committed. Always False unless ``is_check_greedy``.
        """
        if not self.is_check_greedy:
            return False
        prefix, target = prefix.to(self.device), target.to(self.device)
        seq = torch.full((1, len(prefix) + len(target)), self.mask_id, dtype=torch.long, device=self.device)
        seq[0, : len(prefix)] = prefix
        prompt_index = torch.arange(seq.shape[1], device=self.device) < len(prefix)
        cfg_scale = self.sampler["cfg_scale"]
        for _ in range(len(target)):
            eligible = (seq[0] == self.mask_id) & ~prompt_index
            logits = get_logits(self.model, seq, prompt_index, cfg_scale, self.mask_id)[0]
            x0 = logits.argmax(dim=-1)
            confidence = torch.where(eligible, token_confidence(logits, x0), -torch.inf)
            j = int(confidence.argmax())
            seq[0, j] = x0[j]
        return bool((seq[0, len(prefix) :] == target).all())

    def encode_request(self, index: int, context: str, continuation: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Context and continuation ids (1-D int64) of one likelihood request, checked against ``max_length``."""
        context_ids, continuation_ids = self.encode_pair(context, continuation)
        if not continuation_ids:
            raise ValueError(f"request {index} (context {preview(context)}): the continuation {continuation!r} "
                             "has no tokens to score.")  # fmt: skip
        total = len(context_ids) + len(continuation_ids)
        if total > self.max_length:
            raise ValueError(
                f"request {index} (context {preview(context)}): context + continuation are {total} tokens, "
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
                results += self.score_group(group, stats)
                progress.update(len(group))
                group = []
            group.append((index, request))
        if group:
            results += self.score_group(group, stats)
            progress.update(len(group))
        progress.close()
        self.speed.merge(stats, "loglikelihood")
        return results

    def score_group(self, group: list, stats: dict) -> list[tuple[float, float]]:
        """(ll, is_greedy) of (index, request) pairs that share one context, scored in shared forwards."""
        started, forwards = time.perf_counter(), self.forwards
        context = group[0][1].args[0]
        pairs = [self.encode_request(index, *request.args) for index, request in group]
        # Noise seeded from the context alone: the choices of a question share their random numbers
        # (lower variance of their comparison), and a result never depends on order, batch or process.
        generators = [torch.Generator().manual_seed(self.seed_of(context)) for _ in pairs]
        lls = get_log_likelihoods(self.model, pairs, mc_num=self.mc_num, batch_size=self.batch_size,
                                  cfg_scale=self.sampler["cfg_scale"], mask_id=self.mask_id,
                                  generators=generators)  # fmt: skip
        scored = []
        for (_, request), (prefix, target), ll in zip(group, pairs, lls):
            greedy = self.suffix_greedy_prediction(prefix, target)
            self.cache_hook.add_partial("loglikelihood", request.args, (ll, greedy))
            scored.append((ll, float(greedy)))
        share = 1 / len(group)
        seconds, forwards = (time.perf_counter() - started) * share, (self.forwards - forwards) * share
        for _, request in group:
            self.speed.record(stats, getattr(request, "task_name", None), seconds, forwards)
        return scored

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "loglikelihood_rolling (perplexity tasks such as wikitext) is not supported: a masked diffusion "
            "model has no left-to-right factorisation into per-token probabilities, and its ELBO bounds the "
            "likelihood of an answer given a prompt. Use multiple-choice, loglikelihood or generation tasks."
        )

    # ------------------------------------------------------------------ generation

    def answer_length(self, gen_kwargs: dict) -> int:
        """gen_length, or the task's max_gen_toks rounded up to whole blocks when that is smaller."""
        gen_length, block_length = self.sampler["gen_length"], self.sampler["block_length"]
        max_gen_toks = gen_kwargs.get("max_gen_toks")
        if max_gen_toks is None:
            return gen_length
        blocks = max(1, -(-as_int("max_gen_toks", max_gen_toks) // block_length))
        return min(gen_length, blocks * block_length)

    def generate_kwargs(self, gen_length: int) -> dict:
        """``generate()``'s keyword arguments for answers of ``gen_length`` tokens (whole blocks)."""
        settings = self.sampler
        # The same steps per block as the full setting when a task asks for fewer blocks.
        blocks, all_blocks = gen_length // settings["block_length"], settings["gen_length"] // settings["block_length"]
        return {**settings, "steps": settings["steps"] * blocks // all_blocks, "gen_length": gen_length,
                "mask_id": self.mask_id}  # fmt: skip

    def cut_answer(self, answer_ids: list[int], until: list[str]) -> str:
        """Decode with special tokens, cut at the first occurrence of each stop string in turn (and at
        the end of text / end of turn), then drop special tokens."""
        text = self.tokenizer.decode(answer_ids, skip_special_tokens=False)
        for stop in [*until, *self.stop_tokens]:
            if stop:
                text = text.split(stop)[0]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]  # the model's own special tokens
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Answer each request's context with ``generate()`` and cut at its stop strings.

        Prompts of one answer length are sorted by length and run ``batch_size`` at a time,
        left-padded with attention masks (each row gets the tokens it would get alone); answers come
        back in request order. With a stochastic sampler (``genjo.settings.is_stochastic``: a random
        remasking rule or temperature > 0) each request runs alone with the random state seeded from its
        context (and its occurrence, for repeated requests), so answers do not depend on the batch size
        or the number of processes.
        """
        prompts, stops, lengths, seeds, seen = [], [], [], [], {}
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            gen_kwargs = gen_kwargs or {}
            until = gen_kwargs.get("until") or []
            stops.append([until] if isinstance(until, str) else list(until))
            ids = self.encode_prompt(context)
            if not ids:
                raise ValueError(f"request {index}: the context is empty; generation needs a prompt.")
            length = self.answer_length(gen_kwargs)
            if len(ids) + length > self.max_length:
                raise ValueError(
                    f"request {index} (context {preview(context)}): prompt ({len(ids)} tokens) + answer "
                    f"({length}) exceed max_length={self.max_length}. Use fewer few-shot examples or a smaller "
                    "gen_length."
                )
            prompts.append(ids)
            lengths.append(length)
            seen[context] = seen.get(context, -1) + 1
            seeds.append((str(context), str(seen[context])))

        stochastic = is_stochastic(self.sampler)
        # Longest answers and prompts first: an out-of-memory error shows early.
        order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], -len(prompts[i])))
        batch_size = 1 if stochastic else self.batch_size
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
            with seeded(self.seed_of(*seeds[batch[0]]), self._device) if stochastic else nullcontext():
                out = generate(self.model, prompt, attention_mask, stats=run, **self.generate_kwargs(lengths[batch[0]]))
            seconds = (time.perf_counter() - started) / len(batch)
            tokens = sum(run.committed_per_step) / len(batch)
            for row, i in zip(out[:, width:].tolist(), batch):
                answers[i] = self.cut_answer(row, stops[i])
                self.cache_hook.add_partial("generate_until", requests[i].args, answers[i])
                self.speed.record(stats, getattr(requests[i], "task_name", None), seconds, run.nfe, tokens)
            progress.update(len(batch))
        progress.close()
        self.speed.merge(stats, "generate_until")  # also the ranks' meeting point before lm-eval gathers
        return answers
