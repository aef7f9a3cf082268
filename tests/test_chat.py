"""chat.py: the conversation bookkeeping (scripted model) and the real program driven through a terminal."""

import os
import re
import signal
import sys

import pytest
from conftest import BOS, EOS, EOT, MASK, ScriptedModel, scripted_answer

import chat as chat_script
from chat import CANCELLED, EXIT_INTERRUPTED, THINKING, ChatSession, banner, chat_loop
from genjo.chat_format import user_turn_ids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- helpers


def session(tokenizer, gen_length=16, max_len=512, answer="42"):
    model = ScriptedModel(scripted_answer(tokenizer, answer, gen_length), max_sequence_length=max_len)
    return ChatSession(model, tokenizer, gen_length=gen_length, steps=gen_length, block_length=gen_length)


def test_banner_layout():
    lines = banner(128, 128).splitlines()
    assert lines == ["*" * 66, "**  Answer Length: 128  |  Sampling Steps: 128  **", "*" * 66]


def test_second_turn_reads_the_first_with_a_single_bos(tiny_tokenizer):
    chat = session(tiny_tokenizer)
    reply, dropped = chat.ask("What is 12 + 30?")
    assert (reply, dropped) == ("42", 0)
    first = chat.history_ids()
    answer = tiny_tokenizer("42", add_special_tokens=False)["input_ids"] + [EOT]
    assert first == user_turn_ids(tiny_tokenizer, "What is 12 + 30?") + answer
    assert first[-1] == EOT and EOS not in first  # the EOS padding left the generated part only

    prompt, kept = chat.build_prompt("Sort: 3 1 2")
    assert prompt == first + user_turn_ids(tiny_tokenizer, "Sort: 3 1 2")[1:]  # history + new ids minus BOS
    chat.ask("Sort: 3 1 2")
    text = tiny_tokenizer.decode(chat.history_ids())
    assert text.count("<|startoftext|>") == 1 and text.startswith("<|startoftext|>")
    assert "42<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nSort: 3 1 2<|eot_id|>" in text
    # the model saw the first turn while answering the second
    assert chat.model.calls[-1][0, : len(first)].tolist() == first


def test_reset_forgets_the_conversation(tiny_tokenizer):
    chat = session(tiny_tokenizer)
    chat.ask("What is 12 + 30?")
    chat.reset()
    assert chat.history_ids() == []
    prompt, _ = chat.build_prompt("Sort: 3 1 2")
    assert prompt == user_turn_ids(tiny_tokenizer, "Sort: 3 1 2")


def test_oldest_turns_are_dropped_when_the_model_is_full(tiny_tokenizer):
    chat = session(tiny_tokenizer, gen_length=16, max_len=80)
    questions = ["What is 12 + 30?", "Sort: 3 1 2", "Reverse: alpha bravo charlie", "What is 1 + 1?"]
    dropped = [chat.ask(q)[1] for q in questions]
    assert dropped[0] == 0 and sum(dropped) > 0
    history = chat.history_ids()
    assert history[0] == BOS and history.count(BOS) == 1
    assert tiny_tokenizer.decode(history).endswith("What is 1 + 1?<|eot_id|><|start_header_id|>assistant"
                                                   "<|end_header_id|>\n\n42<|eot_id|>")  # fmt: skip
    assert all(len(call[0]) <= 80 for call in chat.model.calls)


def test_a_failed_turn_keeps_the_history(tiny_tokenizer):
    chat = session(tiny_tokenizer)
    chat.ask("What is 12 + 30?")
    before = chat.history_ids()
    chat.block_length = 5  # 16 is not a multiple of 5
    with pytest.raises(ValueError, match="multiple of block_length"):
        chat.ask("Sort: 3 1 2")
    assert chat.history_ids() == before


# ----------------------------------------------------------------------------- the real program


def spawn_chat(model_path: str, *extra: str):
    pexpect = pytest.importorskip("pexpect")
    args = ["chat.py", "--model", model_path, "--gen-length", "32", "--steps", "32", "--block-length", "32", *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    # A terminal's shell starts programs with Ctrl-C enabled; a test run in the background (nohup, `&`)
    # would pass on SIGINT ignored, and Python then never raises KeyboardInterrupt.
    return pexpect.spawn(sys.executable, args, cwd=ROOT, env=env, encoding="utf-8", timeout=120, dimensions=(50, 200),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip


@pytest.mark.slow
def test_terminal_chat_two_turns_history_reset_quit(instruct_model_path):
    """A person's session: two questions, /history shows the second turn reading the first, /reset, /quit.

    /history prints the conversation as the model reads it, so it shows that the second prompt holds the
    first question and answer (ended by <|eot_id|>, no EOS padding) behind a single BOS.
    """
    child = spawn_chat(instruct_model_path, "--multi-turn")  # the embedded model is single-turn by default
    child.expect_exact("**  Answer Length: 32  |  Sampling Steps: 32  **")
    child.expect_exact("Enter your question: ")
    child.sendline("What is the capital of France?")
    child.expect(r"Bot's reply: ([^\r\n]*)\r\n-{71}")
    first_reply = child.match.group(1).strip()
    child.expect_exact("Enter your question: ")
    child.sendline("Sort: 3 1 2")
    child.expect(r"Bot's reply: [^\r\n]*\r\n-{71}")
    child.expect_exact("Enter your question: ")
    child.sendline("/history")
    child.expect(r"History \((\d+) tokens\):\r\n(.*?)\r\n-{71}")
    history = child.match.group(2).replace("\r\n", "\n")
    assert history.count("<|startoftext|>") == 1 and history.startswith("<|startoftext|>")
    turns = re.split(r"<\|start_header_id\|>user<\|end_header_id\|>\n\n", history)
    assert len(turns) == 3  # BOS, first turn, second turn
    assert turns[1].startswith("What is the capital of France?<|eot_id|>")
    first_answer = turns[1].split("<|start_header_id|>assistant<|end_header_id|>\n\n")[1]
    assert re.sub(r"<\|[a-z_]+\|>", "", first_answer).strip() == first_reply  # the first reply is in the context
    assert turns[2].startswith("Sort: 3 1 2<|eot_id|>")
    assert "<|endoftext|>" not in history
    child.expect_exact("Enter your question: ")
    child.sendline("/reset")
    child.expect_exact("(conversation reset)")
    child.sendline("/history")
    child.expect_exact("History (0 tokens):")
    child.expect_exact("Enter your question: ")
    child.sendline("/quit")
    child.expect_exact("Goodbye!")
    child.expect(pytest.importorskip("pexpect").EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in (child.before or "")


@pytest.mark.slow
def test_terminal_chat_ctrl_c_cancels_an_answer_and_keeps_the_history(instruct_model_path):
    """A person's session: one answer, a second question cancelled by Ctrl-C mid-generation, /history shows only
    the first turn, a third question is answered in that context, then a second Ctrl-C, at the prompt, ends the
    chat with status 130.

    The answers take 96 steps (about a second on a CPU), so the Ctrl-C sent right after the "answering" line
    lands while generate() runs.
    """
    pexpect = pytest.importorskip("pexpect")
    child = spawn_chat(instruct_model_path, "--steps", "96", "--multi-turn")
    child.expect_exact("Enter your question: ")
    child.sendline("What is 12 + 30?")
    child.expect(r"Bot's reply: ([^\r\n]*)\r\n-{71}")
    first_reply = child.match.group(1).strip()
    child.expect_exact("Enter your question: ")
    child.sendline("Sort: 3 1 2")
    child.expect_exact(THINKING)
    child.sendintr()
    child.expect_exact(CANCELLED)
    child.expect_exact("Enter your question: ")
    child.sendline("/history")
    child.expect(r"History \((\d+) tokens\):\r\n(.*?)\r\n-{71}")
    history = child.match.group(2).replace("\r\n", "\n")
    assert history.count("<|start_header_id|>user") == 1 and "Sort" not in history
    assert history.endswith(f"What is 12 + 30?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
                            f"{first_reply}<|eot_id|>")  # fmt: skip
    child.expect_exact("Enter your question: ")
    child.sendline("Reverse: alpha bravo charlie")
    child.expect(r"Bot's reply: [^\r\n]*\r\n-{71}")
    child.expect_exact("Enter your question: ")
    child.sendline("/history")
    child.expect(r"History \((\d+) tokens\):\r\n(.*?)\r\n-{71}")
    history = child.match.group(2).replace("\r\n", "\n")
    assert history.count("<|start_header_id|>user") == 2 and "Sort" not in history
    assert history.count("<|startoftext|>") == 1 and "What is 12 + 30?" in history and "Reverse: alpha" in history
    child.expect_exact("Enter your question: ")
    child.sendintr()
    child.expect_exact("Goodbye!")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == EXIT_INTERRUPTED
    assert "Traceback" not in (child.before or "")


def test_chat_loop_ends_on_eof_and_reports_errors(tiny_tokenizer):
    chat = session(tiny_tokenizer)
    chat.block_length = 5  # every turn fails: 16 is not a multiple of 5
    inputs, printed = iter(["What is 12 + 30?"]), []

    def read(prompt):
        printed.append(prompt)
        return next(inputs)  # StopIteration is not EOFError: emulate input() at EOF below

    def read_then_eof(prompt):
        try:
            return read(prompt)
        except StopIteration:
            raise EOFError from None

    assert chat_loop(chat, input_fn=read_then_eof, print_fn=printed.append) == 0
    assert any(str(p).startswith("Error: gen_length (16) must be a multiple") for p in printed)
    assert printed[-1] == "Goodbye!" and chat.history_ids() == []


class InterruptedOnce(ScriptedModel):
    """A scripted model whose `interrupt_at`-th forward raises KeyboardInterrupt, as Ctrl-C does mid-answer."""

    def __init__(self, *args, interrupt_at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.interrupt_at = interrupt_at

    def __call__(self, input_ids, attention_mask=None):
        if len(self.calls) == self.interrupt_at:
            self.calls.append(input_ids.clone())
            raise KeyboardInterrupt
        return super().__call__(input_ids, attention_mask)


def test_ctrl_c_during_an_answer_cancels_it_and_keeps_the_history(tiny_tokenizer):
    """The second question is interrupted at its third forward: the history still holds the first turn alone, the
    third question reads it, and Ctrl-C at the prompt then ends the loop with status 130."""
    model = InterruptedOnce(scripted_answer(tiny_tokenizer, "42", 16), interrupt_at=16 + 2)
    chat = ChatSession(model, tiny_tokenizer, gen_length=16, steps=16, block_length=16)
    inputs, printed = iter(["What is 12 + 30?", "Sort: 3 1 2", "What is 1 + 1?"]), []

    def read(prompt):
        try:
            return next(inputs)
        except StopIteration:
            raise KeyboardInterrupt from None

    assert chat_loop(chat, input_fn=read, print_fn=printed.append) == EXIT_INTERRUPTED
    assert printed.count(CANCELLED) == 1 and printed.count("Bot's reply: 42") == 2 and printed[-1] == "Goodbye!"
    text = tiny_tokenizer.decode(chat.history_ids())
    assert "Sort" not in text and text.count("<|start_header_id|>user") == 2
    first = (
        user_turn_ids(tiny_tokenizer, "What is 12 + 30?")
        + tiny_tokenizer("42", add_special_tokens=False)["input_ids"]
        + [EOT]
    )
    assert chat.model.calls[-1][0, : len(first)].tolist() == first  # the third question read the first turn


def test_typed_special_tokens_reach_the_model_as_text(tiny_tokenizer):
    chat = session(tiny_tokenizer)
    chat.ask("Say <|mdm_mask|> and <|eot_id|> please")
    prompt = chat.model.calls[0][0, : -chat.gen_length].tolist()
    assert MASK not in prompt and prompt.count(EOT) == 1  # the template's own <|eot_id|> only
    assert "Say <|mdm_mask|> and <|eot_id|> please<|eot_id|>" in tiny_tokenizer.decode(chat.history_ids())


def test_flags_left_unset_take_the_checkpoint_sampler_defaults(instruct_model_path, monkeypatch):
    sessions = []
    monkeypatch.setattr(chat_script, "chat_loop", lambda session: sessions.append(session) or 0)
    assert chat_script.main(["--model", instruct_model_path]) == 0
    assert chat_script.main(["--model", instruct_model_path, "--gen-length", "64", "--temperature", "0.5"]) == 0
    defaults, given = sessions
    config = defaults.model.config.sampler_defaults
    assert (defaults.gen_length, defaults.steps, defaults.block_length) == (
        config["gen_length"], config["steps"], config["block_length"])  # fmt: skip
    assert (given.gen_length, given.steps, given.temperature) == (64, config["steps"], 0.5)


def test_help_names_every_default(capsys):
    parser = chat_script.build_parser()
    flags = [action for action in parser._actions if action.dest != "help"]
    assert len(flags) == 15 and all("(default: " in action.help for action in flags)
    with pytest.raises(SystemExit):
        chat_script.main(["--help"])
    assert "SPEC" not in capsys.readouterr().out and "SPEC" not in chat_script.__doc__


def test_single_turn_models_get_each_question_alone_and_the_policy_is_stated(instruct_model_path, monkeypatch):
    sessions, chat_loop = [], chat_script.chat_loop
    monkeypatch.setattr(chat_script, "chat_loop", lambda session: sessions.append(session) or 0)
    assert chat_script.main(["--model", instruct_model_path]) == 0
    assert chat_script.main(["--model", instruct_model_path, "--multi-turn"]) == 0
    alone, whole = sessions
    assert (alone.multi_turn, whole.multi_turn) == (False, True)  # the embedded model is single-turn
    for session in sessions:
        session.ask("What is the capital of France?")
    assert alone.build_prompt("Sort: 3 1 2")[0] == chat_script.user_turn_ids(alone.tokenizer, "Sort: 3 1 2")
    assert len(whole.build_prompt("Sort: 3 1 2")[0]) > len(alone.build_prompt("Sort: 3 1 2")[0])
    printed = []
    inputs = iter(["/help", "/quit"])
    assert chat_loop(alone, input_fn=lambda _: next(inputs), print_fn=printed.append) == 0
    assert chat_script.history_line(False) in printed
    assert f"Unknown command /help. {chat_script.HELP}" in printed  # listed, not sent to the model
