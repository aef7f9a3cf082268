"""Training data from JSON-lines files, read as resumable streams.

Pre-training files hold one document per line, ``{"text": "..."}``; SFT files hold one conversation per
line, ``{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...]}``.

Files are read line by line (a file larger than memory trains) and loop epoch after epoch. The position
in the stream (file, byte offset, shuffle buffer, token carry-over) is a small ``state_dict()`` of plain
Python values, saved with each checkpoint so that ``--resume`` continues with exactly the next batch.

A line is held out of training when the SHA-256 of its bytes falls below ``eval_fraction``: a pure
function of the line, so the split never changes between runs, machines or numbers of processes.
"""

import glob
import hashlib
import json
import os
import random
from collections.abc import Callable
from typing import Optional

from ..chat_format import chat_pieces, encode_chat, encode_pieces, encode_plain
from ..storage import decode_line

# Prompt + answer pairs: (prompt ids, answer ids ending with the end-of-turn token).
Pair = tuple[list[int], list[int]]


def data_files(pattern: str) -> list[str]:
    """The files of a path or glob pattern (sorted), or a ValueError naming the pattern."""
    files = sorted(glob.glob(os.path.expanduser(pattern))) if glob.has_magic(pattern) else [pattern]
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise ValueError(f"No data file matches {pattern!r}; pass a .jsonl file or a glob such as 'data/*.jsonl'.")
    return files


def is_held_out(line: bytes, fraction: float) -> bool:
    """True for about `fraction` of all lines, chosen by the SHA-256 of the (stripped) line."""
    if fraction <= 0:
        return False
    return int.from_bytes(hashlib.sha256(line).digest()[:8], "big") / 2**64 < fraction


class JsonlStream:
    """Records (dicts) of JSON-lines files in order, with an optional shuffle buffer; endless when `loop`.

    Each record must hold `key` (``"text"``: a string; ``"messages"``: a list of messages). `keep(line)`
    filters raw lines (the train / held-out split). Yields (record, location), location = "path:line";
    ``last_epoch`` is the epoch (pass over the files) of the record yielded last.

    The shuffle buffer holds where lines are (file, byte offset, line number, epoch), not the lines: a line
    is read again when it is drawn, so memory and the saved state stay small whatever the documents' size.
    It never holds lines of two epochs (at the end of the files it empties before the next pass starts), so
    a file shorter than the buffer is shuffled as a whole, each line once per epoch.
    """

    def __init__(
        self,
        files: list[str],
        key: str,
        keep: Optional[Callable[[bytes], bool]] = None,
        loop: bool = True,
        shuffle_buffer: int = 0,
        seed: int = 0,
    ):
        self.files, self.key, self.keep, self.loop = files, key, keep, loop
        self.shuffle_buffer = shuffle_buffer
        self.epoch, self.file_index, self.offset, self.line_no = 0, 0, 0, 0
        self.buffer: list[list[int]] = []  # [file index, byte offset, line number, epoch] of lines waiting
        self.last_epoch = 0
        self.rng = random.Random(f"shuffle:{seed}")
        self._handle = None
        self._readers: dict[int, object] = {}  # file index -> handle for reading drawn lines again
        self._kept_this_epoch = 0

    def state_dict(self) -> dict:
        return dict(epoch=self.epoch, file_index=self.file_index, offset=self.offset, line_no=self.line_no,
                    buffer=[list(b) for b in self.buffer], rng=self.rng.getstate(),
                    kept_this_epoch=self._kept_this_epoch)  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict(); ValueError when it does not fit these files (another data set, or a
        state saved before the buffer held line positions)."""
        self._close()
        try:
            epoch, file_index, offset = int(state["epoch"]), int(state["file_index"]), int(state["offset"])
            line_no, kept = int(state["line_no"]), int(state["kept_this_epoch"])
            buffer = self._positions(state["buffer"])
            rng = _as_tuples(state["rng"])
            random.Random().setstate(rng)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ValueError(f"the saved data position is incomplete or malformed ({type(error).__name__}: "
                             f"{error}).") from None  # fmt: skip
        for index, position in [(file_index, offset), *((entry[0], entry[1]) for entry in buffer)]:
            if index == len(self.files) and position == 0:
                continue  # the end of an epoch
            path = self.files[index] if 0 <= index < len(self.files) else None
            if path is None or not os.path.isfile(path) or not 0 <= position <= os.path.getsize(path):
                raise ValueError(f"the saved data position (file {index}, byte {position}) does not fit "
                                 f"{self.files}; resume with the --data of the saved run.")  # fmt: skip
        self.epoch, self.file_index, self.offset, self.line_no = epoch, file_index, offset, line_no
        self.buffer, self._kept_this_epoch = buffer, kept
        self.rng.setstate(rng)

    def _positions(self, saved: list) -> list[list[int]]:
        """The saved buffer as [file index, offset, line, epoch] entries. A state of an earlier version held
        the records themselves, [record, "path:line", epoch]: their lines are found again in the files."""
        if all(len(entry) == 4 for entry in saved):
            return [[int(v) for v in entry] for entry in saved]
        wanted: dict[int, set[int]] = {}  # file index -> line numbers of the old entries
        for _, location, _ in saved:
            path, line = location.rsplit(":", 1)
            wanted.setdefault(self.files.index(path), set()).add(int(line))
        offsets: dict[tuple[int, int], int] = {}
        for index, lines in wanted.items():
            with open(self.files[index], "rb") as handle:
                offset = 0
                for number, raw in enumerate(handle, start=1):
                    if number in lines:
                        offsets[index, number] = offset
                    offset += len(raw)
        positions = []
        for _, location, epoch in saved:
            path, line = location.rsplit(":", 1)
            index = self.files.index(path)
            positions.append([index, offsets[index, int(line)], int(line), int(epoch)])
        return positions

    def _close(self) -> None:
        for handle in [self._handle, *self._readers.values()]:
            if handle is not None:
                handle.close()
        self._handle, self._readers = None, {}

    def _read(self, within_epoch: bool = False) -> Optional[list[int]]:
        """Where the next kept line of the files is, in order ([file index, offset, line, epoch]; the line is
        checked now, so a bad line stops the run when it is first read), or None at the end of the files when
        not looping or `within_epoch`."""
        while True:
            if self.file_index == len(self.files):
                if not self.loop or within_epoch:
                    return None
                if self._kept_this_epoch == 0:
                    raise ValueError(f"No training records in {self.files} (every line is empty or held out).")
                self.epoch, self.file_index, self.offset, self.line_no = self.epoch + 1, 0, 0, 0
                self._kept_this_epoch = 0
            path = self.files[self.file_index]
            if self._handle is None:
                self._handle = open(path, "rb")
                self._handle.seek(self.offset)
            start = self.offset
            raw = self._handle.readline()
            if not raw:
                self._close()
                self.file_index, self.offset, self.line_no = self.file_index + 1, 0, 0
                continue
            self.offset += len(raw)
            self.line_no += 1
            line = raw.strip()
            if not line or (self.keep is not None and not self.keep(line)):
                continue
            self._parse(line, f"{path}:{self.line_no}")
            self._kept_this_epoch += 1
            return [self.file_index, start, self.line_no, self.epoch]

    def _record_at(self, file_index: int, offset: int, line_no: int) -> tuple[dict, str]:
        """The record of the line at (file, byte offset), read again, and its location "path:line"."""
        handle = self._readers.get(file_index)
        if handle is None:
            handle = self._readers[file_index] = open(self.files[file_index], "rb")
        handle.seek(offset)
        location = f"{self.files[file_index]}:{line_no}"
        return self._parse(handle.readline().strip(), location), location

    def _parse(self, line: bytes, location: str) -> dict:
        try:
            record = json.loads(decode_line(line, location))
        except json.JSONDecodeError as error:
            raise ValueError(f"{location}: not a JSON line ({error}).") from None
        value = record.get(self.key) if isinstance(record, dict) else None
        wanted = str if self.key == "text" else list
        if not isinstance(value, wanted):
            example = '{"text": "..."}' if self.key == "text" else '{"messages": [{"role": ..., "content": ...}]}'
            raise ValueError(f"{location}: each line must be an object like {example}; got {line[:80]!r}.")
        return record

    def __iter__(self):
        return self

    def __next__(self) -> tuple[dict, str]:
        while len(self.buffer) < max(1, self.shuffle_buffer):
            # one epoch at a time: the next pass over the files starts once this one's lines are all drawn
            item = self._read(within_epoch=bool(self.buffer))
            if item is None:
                break
            self.buffer.append(item)
        if not self.buffer:
            raise StopIteration
        i = self.rng.randrange(len(self.buffer)) if self.shuffle_buffer > 1 else 0
        self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
        file_index, offset, line_no, self.last_epoch = self.buffer.pop()
        return self._record_at(file_index, offset, line_no)


def _as_tuples(value):
    """random.Random.setstate wants tuples; a saved state may come back with lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


class PackedRows:
    """Rows of `length` tokens cut from documents joined by `separator` (default: EOS; a row may start
    mid-document)."""

    def __init__(self, records: JsonlStream, tokenizer, length: int, separator: Optional[list[int]] = None):
        self.records, self.tokenizer, self.length = records, tokenizer, length
        self.separator = [tokenizer.eos_token_id] if separator is None else list(separator)
        self.carry: list[int] = []  # tokens read but not yet in a row

    def state_dict(self) -> dict:
        return dict(records=self.records.state_dict(), carry=list(self.carry))

    def load_state_dict(self, state: dict) -> None:
        self.records.load_state_dict(state["records"])
        self.carry = list(state["carry"])

    def rows(self, n: int) -> list[list[int]]:
        """The next n rows (fewer if a non-looping stream ends)."""
        out = []
        while len(out) < n:
            while len(self.carry) < self.length:
                try:
                    record, _ = next(self.records)
                except StopIteration:
                    return out
                # a spelled <|mdm_mask|> stays text
                self.carry += encode_plain(self.tokenizer, record["text"]) + self.separator
            # every row the carry holds at once: one copy of the carry per call, even for a huge document
            take = min(n - len(out), len(self.carry) // self.length)
            out += [self.carry[i * self.length : (i + 1) * self.length] for i in range(take)]
            self.carry = self.carry[take * self.length :]
        return out


def conversation_pairs(tokenizer, messages: list, location: str = "messages") -> list[Pair]:
    """Every assistant turn of a conversation as a single-turn pair (paper, SFT data).

    A dialogue (p0, r0, p1, r1, ...) gives (p0, r0), (p0 r0 p1, r1), ...: the prompt is the chat template
    of all earlier turns plus the assistant header; the answer is the turn's content and the template's
    end-of-turn token. Message contents are plain text, as at inference (``genjo.chat_format.encode_chat``):
    a spelled ``<|eot_id|>`` or ``<|mdm_mask|>`` stays characters. Returns [(prompt ids, answer ids)]
    (int lists), in order.
    """
    check_messages(messages, location)
    pairs = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if k == 0:
            raise ValueError(f"{location}: the conversation starts with an assistant message, which answers "
                             "nothing; put the 'user' message it answers before it.")  # fmt: skip
        pairs.append(turn_pair(tokenizer, messages[: k + 1], location))
    if not pairs:
        raise ValueError(f"{location}: a conversation needs at least one assistant message.")
    return pairs


def check_messages(messages: list, location: str) -> None:
    """ValueError naming `location` unless every message is a dict with a string 'role' and 'content'."""
    for m in messages:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"{location}: every message needs a string 'role' and 'content'; got {m!r:.80}.")


def turn_pair(tokenizer, messages: list, location: str = "messages") -> Pair:
    """(prompt ids, answer ids) of the last message of a conversation, an assistant turn (see conversation_pairs)."""
    try:
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as error:  # the template's own error (no template, a role it refuses, ...)
        raise ValueError(f"{location}: the tokenizer's chat template failed on this conversation "
                         f"({type(error).__name__}: {error}).") from None  # fmt: skip
    if not full.startswith(prompt):
        raise ValueError(f"{location}: the tokenizer's chat template does not render the prompt as a prefix "
                         "of prompt + answer; SFT needs such a template.")  # fmt: skip
    prompt_ids = encode_chat(tokenizer, messages[:-1], add_generation_prompt=True)
    answer_ids = encode_pieces(tokenizer, _pieces_from(chat_pieces(tokenizer, messages, False), len(prompt)))
    return prompt_ids, answer_ids


def _pieces_from(pieces: list[tuple[str, bool]], start: int) -> list[tuple[str, bool]]:
    """The ``(text, from_template)`` pieces of a rendered chat from character ``start`` on."""
    out, pos = [], 0
    for text, template in pieces:
        if pos + len(text) > start:
            out.append((text[max(0, start - pos) :], template))
        pos += len(text)
    return out


class ChatPairs:
    """(prompt, answer) pairs of the conversations of a stream.

    turns="all" yields every assistant turn of each conversation; "sample" one of them, drawn anew each
    epoch (the paper's treatment of multi-turn dialogue). Pairs longer than `max_len` tokens are skipped.
    """

    def __init__(self, records: JsonlStream, tokenizer, max_len: int, turns: str = "sample", seed: int = 0):
        if turns not in ("all", "sample"):
            raise ValueError(f"sft_turns must be 'all' or 'sample', not {turns!r}.")
        self.records, self.tokenizer, self.max_len, self.turns, self.seed = records, tokenizer, max_len, turns, seed
        self.pending: list[Pair] = []
        self.skipped = 0  # pairs longer than max_len

    def state_dict(self) -> dict:
        return dict(records=self.records.state_dict(), pending=[list(map(list, p)) for p in self.pending],
                    skipped=self.skipped)  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.records.load_state_dict(state["records"])
        self.pending = [(list(p), list(a)) for p, a in state["pending"]]
        self.skipped = state["skipped"]

    def pairs(self, n: int) -> list[Pair]:
        """The next n pairs (fewer if a non-looping stream ends)."""
        out: list[Pair] = []
        skipped_in_a_row = 0
        while len(out) < n:
            if not self.pending:
                try:
                    record, location = next(self.records)
                except StopIteration:
                    return out
                pairs = conversation_pairs(self.tokenizer, record["messages"], location)
                fitting = [p for p in pairs if len(p[0]) + len(p[1]) <= self.max_len]
                self.skipped += len(pairs) - len(fitting)
                skipped_in_a_row = 0 if fitting else skipped_in_a_row + 1
                if skipped_in_a_row > 1000:
                    raise ValueError(f"Conversations are longer than sft_max_len ({self.max_len} tokens); "
                                     "raise --sft-max-len.")  # fmt: skip
                if self.turns == "sample" and fitting:
                    rng = random.Random(f"{self.seed}:{location}:{self.records.last_epoch}")
                    fitting = [rng.choice(fitting)]
                self.pending = fitting
                continue
            out.append(self.pending.pop(0))
        return out


# ----------------------------------------------------------------------------- preference pairs (vrpo)

# (prompt ids, chosen answer ids, rejected answer ids); each answer ends with the end-of-turn token.
PreferenceTriple = tuple[list[int], list[int], list[int]]
PREFERENCE_EXAMPLE = '{"messages": [{"role": "user", "content": "..."}], "chosen": "...", "rejected": "..."}'


def check_preference_record(record: dict, location: str) -> None:
    """ValueError naming `location` ("path:line") unless the record is a valid preference line.

    A valid line: ``messages`` a non-empty list of {"role", "content"} strings ending with the user's turn,
    ``chosen`` and ``rejected`` two different strings (the assistant's preferred and dispreferred answers).
    """
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{location}: each line must be an object like {PREFERENCE_EXAMPLE}; 'messages' is missing "
                         "or empty.")  # fmt: skip
    check_messages(messages, location)
    if messages[-1]["role"] != "user":
        raise ValueError(f"{location}: the messages must end with the user's turn (the answers are the assistant's "
                         f"reply to it); the last one is a {messages[-1]['role']!r} message.")  # fmt: skip
    for key in ("chosen", "rejected"):
        if not isinstance(record.get(key), str):
            raise ValueError(f"{location}: {key!r} must be the text of an answer (a string); got "
                             f"{record.get(key)!r:.80}. Each line is like {PREFERENCE_EXAMPLE}.")  # fmt: skip
    if record["chosen"] == record["rejected"]:
        raise ValueError(f"{location}: 'chosen' and 'rejected' are the same text; such a pair has no preference "
                         "(leave it out).")  # fmt: skip


def preference_triple(tokenizer, record: dict, location: str = "record") -> PreferenceTriple:
    """The token ids of a checked preference record: the chat prompt, then each answer as the assistant's turn."""
    check_preference_record(record, location)
    answers = []
    for key in ("chosen", "rejected"):
        prompt, answer = turn_pair(tokenizer, [*record["messages"], {"role": "assistant", "content": record[key]}],
                                   location)  # fmt: skip
        answers.append(answer)
    return prompt, answers[0], answers[1]


class PreferencePairs:
    """(prompt, chosen, rejected) token ids of the preference records of a stream, with each record's location.

    Triples whose prompt + longer answer exceed `max_len` tokens are skipped (counted in ``skipped``).
    """

    def __init__(self, records: JsonlStream, tokenizer, max_len: int):
        self.records, self.tokenizer, self.max_len = records, tokenizer, max_len
        self.skipped = 0

    def state_dict(self) -> dict:
        return dict(records=self.records.state_dict(), skipped=self.skipped)

    def load_state_dict(self, state: dict) -> None:
        self.records.load_state_dict(state["records"])
        self.skipped = state["skipped"]

    def triples(self, n: int) -> list[PreferenceTriple]:
        """The next n triples (fewer if a non-looping stream ends)."""
        out: list[PreferenceTriple] = []
        skipped_in_a_row = 0
        while len(out) < n:
            try:
                record, location = next(self.records)
            except StopIteration:
                return out
            prompt, chosen, rejected = preference_triple(self.tokenizer, record, location)
            if len(prompt) + max(len(chosen), len(rejected)) > self.max_len:
                self.skipped += 1
                skipped_in_a_row += 1
                if skipped_in_a_row > 1000:
                    raise ValueError(f"Preference pairs are longer than sft_max_len ({self.max_len} tokens); "
                                     "raise --sft-max-len.")  # fmt: skip
                continue
            skipped_in_a_row = 0
            out.append((prompt, chosen, rejected))
        return out


def json_objects(path: str):
    """(record, "path:line") of every non-empty line of a JSON-lines file; ValueError naming the line of a bad one."""
    with open(path, "rb") as f:  # binary lines split at b"\n" only, as storage.read_lines does
        for number, raw in enumerate(f, start=1):
            location = f"{path}:{number}"
            line = decode_line(raw, location).strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{location}: not a JSON line ({error}).") from None
            if not isinstance(record, dict):
                raise ValueError(f"{location}: each line must be a JSON object; got {line[:80]!r}.")
            yield record, location


def check_preference_files(paths: list[str]) -> int:
    """Read every line of the files once (JSON and fields only, no tokenizing); the number of records.

    Raises the ValueError of the first bad line, naming its file and line, before any training starts.
    """
    count = 0
    for path in paths:
        for record, location in json_objects(path):
            check_preference_record(record, location)
            count += 1
    if not count:
        raise ValueError(f"No preference pairs in {paths}: every line is empty.")
    return count
