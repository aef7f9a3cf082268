"""Batch generation: a JSONL file of prompts in, a JSONL file of answers out, on one process or many.

    python generate.py --input prompts.jsonl --output answers.jsonl [sampler flags]
    accelerate launch generate.py --input prompts.jsonl --output answers.jsonl [sampler flags]

Input: one JSON object per line with ``messages`` (a chat, rendered by the tokenizer's chat template
with the generation prompt) or ``prompt`` (raw text, tokenized as is, for base models), and optionally
``id`` (an integer or a string; default: the line number, counted from 1). Other fields are kept. Blank
lines are skipped. Output: the input object plus ``answer`` (decoded, special tokens skipped), and
``id`` first when the line had none, one line per request, in input order.

A run:
1. Every line is read, checked and tokenized before anything is generated: a bad line is a
   ValueError naming its line number.
2. Requests already answered in the output file (or in the shards of an interrupted
   multi-process run) are kept exactly as they are: an answer line is kept when, without its
   ``answer``, it equals its request's line (with the id it was given); a request whose line changed
   since (e.g. a line inserted above lines without ids shifts their ids) is answered again, and the
   run says so. The others are sorted by prompt length (longest first, so memory runs out at the
   first batch if it runs out at all) and cut into batches of ``batch_size``, left-padded with
   attention masks. The output's folder and file are checked for writing before that.
3. Batch k goes to process k mod N. The batches are the same for any number of processes N, so the
   answers are too, bit for bit.
4. Each process appends a batch's answers as soon as it finishes: to the output file itself in a
   single process, to its own shard ``<output>.part<rank>`` under ``accelerate launch`` (several
   processes never write to one file). An interrupted run loses at most one batch per process.
5. At the end the main process rewrites the output file in input order (written beside it, then
   renamed over it) and removes the shards.

Which rows may share a batch: at temperature 0 with ``low_confidence`` remasking the sampler draws no
random numbers and each row of a left-padded batch gets the tokens it would get alone, so prompts
are batched. At temperature > 0, or with ``random`` remasking, the sampler draws its noise for the
whole batch at once, so a row's noise would depend on its batch; those requests are generated one
per call instead, each under its own seed derived from ``seed`` and its id (SHA-256). Their answers
thus do not depend on the batch size, the order of the file or the number of processes.
"""

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Optional, Union

import torch
from tqdm.auto import tqdm

from .chat_format import encode_chat
from .sampling import GenerationStats, generate
from .settings import is_stochastic
from .storage import read_lines, write_text_atomic

DEFAULT_SEED = 1234
DEFAULT_BATCH_SIZE = 8

RequestId = Union[int, str]


# ----------------------------------------------------------------------------- seeds


def derive_seed(seed: int, *texts: str) -> int:
    """A 63-bit seed from a base seed and texts (SHA-256 of them joined by NUL): the same on every run,
    process and machine. The eval harness seeds a request from its context text, generate.py from its id."""
    digest = hashlib.sha256("\x00".join([str(seed), *texts]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 2**63


def request_seed(seed: int, request_id: RequestId) -> int:
    """A 63-bit seed from the run's seed and a request's id: the same on every run, process and machine."""
    return derive_seed(seed, json.dumps(request_id))


@contextmanager
def seeded(seed: int, device: torch.device):
    """Run with torch's global random state (CPU, and ``device`` when it is a GPU) seeded, restored afterwards."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------- requests


@dataclass
class Request:
    line: int  # 1-based line number in the input file
    id: RequestId
    record: dict  # the input object; id first when the line had none
    input_ids: list[int] = field(default_factory=list)  # the prompt's token ids (no padding)


def parse_records(lines: Sequence[str], source: str = "input") -> list[Request]:
    """Requests of JSONL text lines (no tokenization yet). Raises ValueError naming the first bad line."""
    requests, seen = [], {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"{source}, line {number}"
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error.msg} at column {error.colno}).") from None
        if not isinstance(record, dict):
            raise ValueError(f'{where}: expected a JSON object like {{"prompt": "..."}}, got {type(record).__name__}.')
        has_messages, has_prompt = "messages" in record, "prompt" in record
        if has_messages == has_prompt:
            raise ValueError(f"{where}: give exactly one of 'messages' (a chat) and 'prompt' (raw text).")
        if has_prompt and not isinstance(record["prompt"], str):
            raise ValueError(f"{where}: 'prompt' must be a string.")
        if has_messages:
            messages = record["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError(f'{where}: \'messages\' must be a non-empty list like [{{"role": "user", '
                                 f'"content": "..."}}].')  # fmt: skip
            for i, message in enumerate(messages):
                if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                        and isinstance(message.get("content"), str)):  # fmt: skip
                    raise ValueError(f"{where}: messages[{i}] must be an object with string 'role' and 'content'.")
        if "answer" in record:
            raise ValueError(f"{where}: the line already has an 'answer', which the generated answer would "
                             "overwrite; rename that field (e.g. to 'reference').")  # fmt: skip
        if "id" in record:
            request_id = record["id"]
            if isinstance(request_id, bool) or not isinstance(request_id, (int, str)):
                raise ValueError(f"{where}: 'id' must be an integer or a string, got {json.dumps(request_id)}.")
        else:
            request_id = number
            record = {"id": number, **record}
        if request_id in seen:
            raise ValueError(f"{where}: id {json.dumps(request_id)} was already used on line {seen[request_id]}; "
                             "ids must be unique.")  # fmt: skip
        seen[request_id] = number
        requests.append(Request(number, request_id, record))
    return requests


def encode_requests(requests: list[Request], tokenizer, gen_length: int, max_length: Optional[int] = None,
                    source: str = "input") -> list[Request]:  # fmt: skip
    """Fill each request's input_ids (chat template + generation prompt, or the raw prompt, no special
    tokens added), checking that it has a token and that prompt + gen_length fits max_length."""
    for request in requests:
        where = f"{source}, line {request.line}"
        if "messages" in request.record:
            try:
                # Message contents are plain text: a spelled <|eot_id|> or <|mdm_mask|> stays characters.
                request.input_ids = encode_chat(tokenizer, request.record["messages"], add_generation_prompt=True)
            except Exception as error:  # the template's own error (no template, bad roles, ...)
                raise ValueError(f"{where}: the chat template failed ({error}); for a model without a chat "
                                 "template give a raw 'prompt' instead.") from None  # fmt: skip
        else:  # a raw prompt is the caller's own rendering: its special tokens are read as such
            request.input_ids = tokenizer(request.record["prompt"], add_special_tokens=False)["input_ids"]
        if not request.input_ids:
            raise ValueError(f"{where}: the prompt has no tokens; give some text.")
        if max_length is not None and len(request.input_ids) + gen_length > max_length:
            raise ValueError(f"{where}: the prompt's {len(request.input_ids)} tokens + gen_length {gen_length} "
                             f"exceed the model's max_sequence_length ({max_length}); shorten the prompt or "
                             "--gen-length.")  # fmt: skip
    return requests


def read_requests(path: Union[str, Path], tokenizer, gen_length: int, max_length: Optional[int] = None):
    """Every request of a JSONL file, checked and tokenized (ValueError naming the first bad line)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--input {path} is a folder; give the JSONL file of requests inside it.")
    if not path.is_file():
        raise ValueError(f"--input {path} does not exist.")
    lines = read_lines(path)
    return encode_requests(parse_records(lines, str(path)), tokenizer, gen_length, max_length, str(path))


def plan_batches(requests: list[Request], batch_size: int) -> list[list[Request]]:
    """Requests sorted by prompt length, longest first (ties in file order), cut into batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size ({batch_size}) must be >= 1.")
    ordered = sorted(requests, key=lambda r: -len(r.input_ids))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


# ----------------------------------------------------------------------------- generation


@dataclass
class BatchStats:
    requests: int = 0
    answer_tokens: int = 0  # answer tokens before the first EOS/EoT
    nfe: int = 0  # forward calls
    batches: int = 0


def _stop_ids(model, tokenizer) -> list[int]:
    config = getattr(model, "config", None)
    ids = {getattr(config, "eos_token_id", None), getattr(config, "eot_token_id", None), tokenizer.eos_token_id}
    return sorted(i for i in ids if isinstance(i, int))


def generate_batch(model, tokenizer, batch: list[Request], settings: dict, seed: int = DEFAULT_SEED,
                   stats: Optional[BatchStats] = None) -> list[str]:  # fmt: skip
    """Answers of one batch of encoded requests, in the batch's order (special tokens skipped).

    Prompts are left-padded with the tokenizer's pad token (EOS when it has none) into a (B, L) int64
    tensor with a (B, L) attention mask. When the settings are stochastic (is_stochastic) each request
    runs alone under its own seed, so batch must hold a single request then.
    """

    stochastic = is_stochastic(settings)
    if stochastic and len(batch) != 1:
        raise ValueError("stochastic settings (temperature > 0 or random remasking) need one request per batch.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    length = max(len(r.input_ids) for r in batch)
    device = model.device
    prompt = torch.tensor([[pad] * (length - len(r.input_ids)) + r.input_ids for r in batch], device=device)
    attention_mask = torch.tensor([[0] * (length - len(r.input_ids)) + [1] * len(r.input_ids) for r in batch],
                                  device=device)  # fmt: skip
    run_stats = GenerationStats()
    with seeded(request_seed(seed, batch[0].id), device) if stochastic else nullcontext():
        out = generate(model, prompt, attention_mask, stats=run_stats, **settings)
    answers = out[:, length:].cpu()
    if stats is not None:
        stop = torch.isin(answers, torch.tensor(_stop_ids(model, tokenizer)))
        # Tokens before the first stop token: a row without one counts in full.
        first_stop = torch.where(stop.any(-1), stop.float().argmax(-1), answers.shape[1])
        stats.answer_tokens += int(first_stop.sum())
        stats.requests += len(batch)
        stats.nfe += run_stats.nfe
        stats.batches += 1
    return tokenizer.batch_decode(answers, skip_special_tokens=True)


def answer_records(model, tokenizer, records: list[dict], settings: dict, batch_size: int = DEFAULT_BATCH_SIZE,
                   seed: int = DEFAULT_SEED) -> list[str]:  # fmt: skip
    """Answers of in-memory requests (the objects of an input file's lines), in their order."""
    lines = [json.dumps(r) for r in records]
    max_length = getattr(getattr(model, "config", None), "max_sequence_length", None)
    requests = encode_requests(parse_records(lines, "request"), tokenizer, settings["gen_length"], max_length,
                               "request")  # fmt: skip
    answers = {}
    for batch in plan_batches(requests, 1 if is_stochastic(settings) else batch_size):
        for request, answer in zip(batch, generate_batch(model, tokenizer, batch, settings, seed)):
            answers[request.id] = answer
    return [answers[r.id] for r in requests]


# ----------------------------------------------------------------------------- files and processes


@dataclass
class ProcessInfo:
    rank: int = 0
    world_size: int = 1
    device: Optional[torch.device] = None  # the process's device under accelerate launch
    state: object = None  # accelerate's PartialState when several processes run

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def gather(self, obj) -> list:
        """Every process's obj, in rank order."""
        if self.state is None:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])


def process_info() -> ProcessInfo:
    """This process's rank, the number of processes and its device: accelerate's when started by
    ``accelerate launch`` (or torchrun) with several processes, else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessInfo()
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # Several CPU processes need accelerate's CPU mode (ACCELERATE_USE_CPU=true, which Accelerator reads and
    # PartialState does not); without CUDA it is the only possibility, so it is chosen then too.
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    # Processes wait for each other at the end while the slowest finishes its share: never time out there.
    state = PartialState(cpu=cpu, timeout=timedelta(weeks=52))
    if state.num_processes != world_size:  # each process would answer, and write, the whole file
        raise ValueError(f"started as one of {world_size} processes, but accelerate sees {state.num_processes}; "
                         "on CPUs launch with `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu ...` "
                         "(EVAL.md).")  # fmt: skip
    return ProcessInfo(state.process_index, state.num_processes, state.device, state)


def shard_paths(output: Path) -> list[Path]:
    """The shards of output (``<output>.part<rank>``) left by this or an interrupted multi-process run."""
    prefix = output.name + ".part"
    if not output.parent.is_dir():
        return []
    shards = [p for p in output.parent.iterdir() if p.name.startswith(prefix) and p.name[len(prefix) :].isdigit()]
    return sorted(shards, key=lambda p: int(p.name[len(prefix) :]))


def stored_answers(paths: Sequence[Path]) -> list[tuple[dict, str]]:
    """(object, line) of every complete answer line of these files, in file order; the object without its
    'answer' is the request it answers.

    A last line without a newline is an interrupted write and is ignored (it will be answered again). Any
    other line that is not an object with 'id' and 'answer' is a ValueError naming it.
    """
    stored = []
    for path in paths:
        if not path.is_file():
            continue
        for number, line in enumerate(read_lines(path, complete_only=True), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or "id" not in record or "answer" not in record:
                raise ValueError(f"{path}, line {number}: not an answer line (a JSON object with 'id' and 'answer'); "
                                 "is --output the right file?")  # fmt: skip
            stored.append((record, line))
    return stored


def read_finished(paths: Sequence[Path], requests: list[Request]) -> tuple[dict[RequestId, str], list[Request]]:
    """The answers these files hold for the requests: ({id: output line}, the requests whose line changed).

    A stored answer is kept only when it answers the same request: the stored object without 'answer'
    equals the request's object (its input line, with the id it was given). A request whose id has stored
    answers that all belong to another line (the input file was edited: a line inserted above lines without
    ids shifts their ids) is "changed": it is answered again and its old answers are dropped. The first
    matching line of an id wins. Ids that no request has are a ValueError (the output of another file).
    """
    by_id = {r.id: r for r in requests}
    kept: dict[RequestId, str] = {}
    stale: set = set()
    for record, line in stored_answers(paths):
        request = by_id.get(record["id"])
        if request is None:
            raise ValueError(f"{paths[0]} holds answers to ids that are not in the input (e.g. "
                             f"{json.dumps(record['id'])}): it belongs to another input file; choose another "
                             "--output.")  # fmt: skip
        if {k: v for k, v in record.items() if k != "answer"} == request.record:
            kept.setdefault(request.id, line)
        else:
            stale.add(request.id)
    changed = [r for r in requests if r.id in stale and r.id not in kept]
    return kept, changed


def check_writable(output: Path, writer: Path) -> None:
    """ValueError, before anything is generated, when the answers could not be written: the output's folder
    is missing or read-only (the final rewrite puts a file beside the output), or the output or this
    process's shard is a folder or cannot be opened for appending."""
    if not output.parent.is_dir():
        raise ValueError(f"the folder of --output ({output.parent}) does not exist.")
    for path in dict.fromkeys([output, writer]):
        if path.is_dir():
            raise ValueError(f"--output {path} is a folder; give a file name (e.g. {path / 'answers.jsonl'}).")
        existed = path.exists()
        try:
            open(path, "a", encoding="utf-8").close()
        except OSError as error:
            raise ValueError(f"--output {path} cannot be written ({error.strerror}); choose a writable "
                             "file.") from None  # fmt: skip
        if not existed:
            path.unlink()
    try:
        tempfile.TemporaryFile(dir=output.parent).close()
    except OSError as error:
        raise ValueError(f"the folder of --output ({output.parent}) is not writable ({error.strerror}); "
                         "choose another folder.") from None  # fmt: skip


def _append(path: Path, lines: list[str]) -> None:
    """Append whole lines, after cutting an interrupted last line (one without a newline) off the file."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())  # an answer counted as finished is on the disk


def _merge(output: Path, requests: list[Request]) -> None:
    """Rewrite output with every request's line in input order (atomically), then remove the shards."""
    shards = shard_paths(output)
    finished, _ = read_finished([output, *shards], requests)
    missing = [r.line for r in requests if r.id not in finished]
    if missing:
        raise ValueError(f"no answer was written for input line(s) {missing[:10]}; run the command again to "
                         "answer them.")  # fmt: skip
    write_text_atomic(output, "".join(finished[r.id] + "\n" for r in requests))
    for shard in shards:
        shard.unlink()


@dataclass
class RunSummary:
    requests: int  # in the input file
    kept: int  # already answered in the output file, kept as they were
    changed: int  # in the output file with another request under their id: answered again
    answered: int  # generated by this run (all processes)
    answer_tokens: int  # of the generated answers, tokens before the first EOS/EoT
    nfe: int  # forward calls, all processes
    batches: int
    wall_s: float  # the slowest process's generation time
    processes: int

    def line(self, output) -> str:
        rate = self.answered / self.wall_s if self.wall_s > 0 else 0.0
        tokens = self.answer_tokens / self.wall_s if self.wall_s > 0 else 0.0
        per_batch = self.nfe / max(self.batches, 1)
        again = f", answered again {self.changed} whose line changed" if self.changed else ""
        return (f"answered {self.answered} requests (kept {self.kept} already answered{again}) in "
                f"{self.wall_s:.1f} s on {self.processes} process{'es' if self.processes > 1 else ''}: "
                f"{rate:.2f} requests/s, {tokens:.1f} answer tokens/s, NFE {self.nfe} (forward passes; "
                f"{per_batch:.1f} per batch of {self.answered / max(self.batches, 1):.1f} requests); "
                f"wrote {output}")  # fmt: skip


def generate_file(model, tokenizer, input_path, output_path, settings: dict, batch_size: int = DEFAULT_BATCH_SIZE,
                  seed: int = DEFAULT_SEED, processes: Optional[ProcessInfo] = None,
                  progress: bool = True) -> RunSummary:  # fmt: skip
    """Answer every request of input_path not yet in output_path; output_path ends up holding one line
    per request, in input order. Every process of a run calls this with the same arguments (see the
    module docstring for the steps). Returns the run's summary (the same on every process)."""
    processes = processes or ProcessInfo()
    input_path, output_path = Path(input_path), Path(output_path)
    if input_path.resolve() == output_path.resolve():
        raise ValueError("--output must differ from --input (the output file is rewritten at the end).")
    writer = output_path if processes.world_size == 1 else output_path.with_name(
        f"{output_path.name}.part{processes.rank}")  # fmt: skip
    check_writable(output_path, writer)
    max_length = getattr(getattr(model, "config", None), "max_sequence_length", None)
    requests = read_requests(input_path, tokenizer, settings["gen_length"], max_length)
    finished, changed = read_finished([output_path, *shard_paths(output_path)], requests)
    if changed and processes.is_main and progress:
        lines = ", ".join(str(r.line) for r in changed[:10]) + (", ..." if len(changed) > 10 else "")
        tqdm.write(f"{len(changed)} request(s) changed since {output_path} was written (input line(s) {lines}): "
                   "their old answers are dropped and they are answered again.")  # fmt: skip
    todo = [r for r in requests if r.id not in finished]
    # Nobody writes before everybody has read what is finished: the plans must agree.
    processes.barrier()

    batches = plan_batches(todo, 1 if is_stochastic(settings) else batch_size)
    mine = batches[processes.rank :: processes.world_size]
    stats = BatchStats()
    started = time.perf_counter()
    desc = "generating" if processes.world_size == 1 else f"generating (process 0 of {processes.world_size})"
    with tqdm(total=sum(len(b) for b in mine), desc=desc, unit="req", disable=not (progress and processes.is_main),
              dynamic_ncols=True) as bar:  # fmt: skip
        for batch in mine:
            answers = generate_batch(model, tokenizer, batch, settings, seed, stats)
            lines = [json.dumps({**r.record, "answer": a}, ensure_ascii=False) for r, a in zip(batch, answers)]
            _append(writer, lines)
            bar.update(len(batch))
    wall = time.perf_counter() - started

    everyone = processes.gather((stats, wall))
    processes.barrier()
    if processes.is_main:
        _merge(output_path, requests)
    processes.barrier()
    return RunSummary(
        requests=len(requests),
        kept=len(requests) - len(todo),
        changed=len(changed),
        answered=sum(s.requests for s, _ in everyone),
        answer_tokens=sum(s.answer_tokens for s, _ in everyone),
        nfe=sum(s.nfe for s, _ in everyone),
        batches=sum(s.batches for s, _ in everyone),
        wall_s=max(w for _, w in everyone),
        processes=processes.world_size,
    )
