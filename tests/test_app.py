"""app.py: the callbacks (scripted model), the page through gradio_client, and a person's visit in Chromium."""

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, MASK, ScriptedModel, require_chromium, scripted_answer

import app
from genjo.chat_format import conversation_messages, encode_chat
from genjo.constraints import constraint_token_ids, parse_constraints
from genjo.denoising_view import (
    COLOUR_MAP,
    CONSTRAINT,
    EARLIER,
    END,
    MASKED,
    NEW_HIGH,
    NEW_LOW,
    NEW_MID,
    chat_prompt_ids,
    check_settings,
    confidence_category,
    generate_response_with_visualization,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tokens shown by the visualisation, and whether its event is still running.
VIS_STATE_JS = """() => [
  [...document.querySelectorAll('#vis .token .text')].map(e => e.innerText),
  !document.querySelector('#vis [data-testid=status-tracker]').classList.contains('hide')]"""


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def question(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ----------------------------------------------------------------------------- pure functions


def test_word_constraints_are_parsed_and_bad_ones_rejected_with_a_message():
    assert parse_constraints("0:Once, 5:upon, 10:time") == {0: "Once", 5: "upon", 10: "time"}
    assert parse_constraints("3:a:b, ") == {3: "a:b"}  # split at the first colon; empty parts ignored
    assert parse_constraints("") == {} and parse_constraints(None) == {}
    for text, message in [("x:y", "'x:y' is not position:word"), ("-1:neg", "'-1:neg' is not"),
                          ("4: ", "'4:' is not"), ("7", "'7' is not"), ("2:one, 2:two", "position 2 is given twice"),
                          ("40:far", "position 40 is past the end of the answer: positions are 0 to 31")]:  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_constraints(text, gen_length=32)


def test_confidence_categories_and_history_format():
    assert [confidence_category(c) for c in (0.0, 0.29, 0.3, 0.69, 0.7, 1.0)] == [
        NEW_LOW, NEW_LOW, NEW_MID, NEW_MID, NEW_HIGH, NEW_HIGH]  # fmt: skip
    assert COLOUR_MAP[NEW_LOW] == "#FF6666" and COLOUR_MAP[EARLIER] == "#6699CC"
    pairs = [["hi", "hello"], ["quiet", ""], ["again", None]]  # an empty reply stays an assistant turn
    assert conversation_messages(pairs) == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "quiet"}, {"role": "assistant", "content": ""},
        {"role": "user", "content": "again"}]  # fmt: skip
    assert conversation_messages(pairs, multi_turn=False) == [{"role": "user", "content": "again"}]
    assert [m["content"] for m in app.to_chatbot(pairs)] == ["hi", "hello", "quiet", app.EMPTY_ANSWER, "again"]


def test_settings_are_checked_with_messages_that_say_what_to_fix():
    assert check_settings(64, 32, 32, 0.0, 0.0, "low_confidence") == (64, 32, 32)
    assert check_settings(16, 30, 128, 0.0, 0.0, "random") == (16, 30, 16)  # block clamped to the answer
    assert check_settings(64, 30, 8, 0.0, 0.0, "random") == (64, 24, 8)  # max(1, steps // blocks) per block
    for args, message in [((64, 32, 24, 0.0, 0.0, "random"), "multiple of Block Length"),
                          ((64, 32, 32, -1.0, 0.0, "random"), "Temperature"),
                          ((64, 32, 32, 0.0, float("nan"), "random"), "CFG Scale must be a finite number"),
                          ((None, 32, 32, 0.0, 0.0, "random"), "Generation Length must be a finite number"),
                          ((64, 32, 32, 0.0, 0.0, "top_k"), "Remasking Strategy")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            check_settings(*args)


def test_user_text_spelling_a_special_token_stays_plain_text(tiny_tokenizer):
    """The prompt goes through genjo.chat_format.encode_chat (tested in test_tokenizer.py): typed specials are text."""
    tok = tiny_tokenizer
    eot, mask = tok.convert_tokens_to_ids("<|eot_id|>"), tok.convert_tokens_to_ids("<|mdm_mask|>")
    typed = [{"role": "user", "content": "a <|eot_id|> b <|mdm_mask|>"}]
    ids = chat_prompt_ids(tok, typed, gen_length=8, max_length=None)
    assert ids == encode_chat(tok, typed)
    assert ids.count(eot) == 1 and mask not in ids  # only the template's end of turn
    assert tok.decode(ids, skip_special_tokens=False).count("<|eot_id|>") == 2  # typed text kept as characters


# ----------------------------------------------------------------------------- the generation callback


def test_frames_keep_every_slot_and_show_end_of_text_as_faint_chips(tiny_tokenizer):
    G = 16
    model = ScriptedModel(scripted_answer(tiny_tokenizer, "42", G))
    frames, text = generate_response_with_visualization(model, tiny_tokenizer, "cpu", question("What is 12 + 30?"),
                                                        gen_length=G, steps=8, block_length=G)  # fmt: skip
    assert text == "42" and len(frames) == 1 + 8  # all-mask state, then one frame per step
    assert frames[0] == [("[MASK]", MASKED)] * G
    assert all(len(f) == G for f in frames)  # no slot is ever dropped
    masks = [sum(t == "[MASK]" for t, _ in f) for f in frames]
    assert masks == [16, 14, 12, 10, 8, 6, 4, 2, 0]  # 2 per step, the linear schedule
    # step 1 reveals the two strongest slots (0, 1: "4", "2"), new tokens coloured by confidence
    assert [t for t, _ in frames[1][:2]] == ["4", "2"]
    assert {c for _, c in frames[1][:2]} <= {NEW_LOW, NEW_MID, NEW_HIGH}
    assert {c for _, c in frames[2][:2]} == {EARLIER}  # revealed earlier: blue
    assert frames[-1][2:] == [("EoT", END)] + [("EOS", END)] * (G - 3)


def test_constraints_hold_their_slots_and_count_as_prompt_for_cfg(tiny_tokenizer):
    G = 16
    model = ScriptedModel(scripted_answer(tiny_tokenizer, "42", G))
    frames, text = generate_response_with_visualization(
        model, tiny_tokenizer, "cpu", question("What is 12 + 30?"), gen_length=G, steps=8, block_length=G,
        constraints={5: "Paris", 40: "dropped"}, cfg_scale=1.0)  # fmt: skip
    word = tiny_tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    L = model.calls[0].shape[1] - G
    assert len(frames) == 2 + 8  # all-mask state, the constraints, then one frame per step
    assert [c for t, c in frames[1] if t != "[MASK]"] == [CONSTRAINT] * len(word)
    assert "".join(t for t, _ in frames[-1][5 : 5 + len(word)]) == " Paris"
    assert "Paris" in text
    for call in model.calls:  # CFG runs conditional and unconditional rows as one batch
        cond, uncond = call
        assert cond[L + 5 : L + 5 + len(word)].tolist() == word  # the model always reads the constraint
        assert (uncond[L + 5 : L + 5 + len(word)] == MASK).all()  # masked with the prompt when unconditional
        assert (uncond[:L] == MASK).all()
    # at position 0 the word has no leading space, as an answer starts
    assert constraint_token_ids(tiny_tokenizer, {0: "Paris"}, G) == dict(
        enumerate(tiny_tokenizer("Paris", add_special_tokens=False)["input_ids"]))  # fmt: skip


def test_a_constraint_word_spelling_a_special_token_stays_text(tiny_tokenizer):
    """Like the message, a constraint is typed text: <|mdm_mask|> must not plant the mask id in the answer."""
    mask, eot = (tiny_tokenizer.convert_tokens_to_ids(t) for t in ("<|mdm_mask|>", "<|eot_id|>"))
    fixed = constraint_token_ids(tiny_tokenizer, {0: "<|mdm_mask|>", 20: "<|eot_id|>"}, 64)
    assert mask not in fixed.values() and eot not in fixed.values()
    assert tiny_tokenizer.decode([fixed[p] for p in sorted(fixed) if p < 20]) == "<|mdm_mask|>"


# gen_length, steps, block_length, constraints, temperature, cfg_scale, remasking, delay
SETTINGS = (32, 16, 32, "", 0.0, 0.0, "low_confidence", 0.0)


def settings(**changes) -> tuple:
    names = ("gen_length", "steps", "block_length", "constraints", "temperature", "cfg_scale", "remasking", "delay")
    values = dict(zip(names, SETTINGS))
    values.update(changes)
    return tuple(values[n] for n in names)


def well_formed(history) -> bool:
    """Finished exchanges only: every user turn has a reply (possibly empty), so the roles alternate."""
    return all(isinstance(u, str) and isinstance(r, str) for u, r in history)


def test_a_rejected_message_leaves_the_history_as_it_was_and_stays_in_the_box():
    history = [["What is 12 + 30?", "42"]]
    for bad, message in [(dict(constraints="x:y"), "'x:y' is not position:word"),
                         (dict(block_length=24), "multiple of Block Length"),
                         (dict(delay=-1), "Visualization Delay")]:  # fmt: skip
        with pytest.warns(UserWarning, match=message):  # gr.Warning outside a page is a Python warning
            new_history, chat, box, _, status = app.user_message_submitted("Sort: 3 1 2", history, *settings(**bad))
        assert new_history == history and box == "Sort: 3 1 2"
        assert status["visible"] and message in status["value"]
        assert [m["role"] for m in chat] == ["user", "assistant"]
    assert app.user_message_submitted("   ", history, *SETTINGS)[0] == history  # blank: no change
    accepted = app.user_message_submitted("Sort: 3 1 2", history, *SETTINGS)
    assert accepted[0] == history + [["Sort: 3 1 2", None]] and accepted[2] == "" and not accepted[4]["visible"]


def test_a_pending_turn_is_kept_while_answered_and_dropped_when_its_answer_never_ran():
    page = SimpleNamespace(session_hash="page-1")
    pending = [["What is 12 + 30?", "42"], ["Sort: 3 1 2", None]]
    app.ANSWERING.add("page-1")
    try:
        with pytest.warns(UserWarning, match="still being written"):
            history, _, box, _, _ = app.user_message_submitted("What is 1 + 1?", pending, *SETTINGS, page)
        assert history == pending and box == "What is 1 + 1?"
    finally:
        app.ANSWERING.discard("page-1")
    history = app.user_message_submitted("What is 1 + 1?", pending, *SETTINGS, page)[0]  # its event never ran
    assert history == [["What is 12 + 30?", "42"], ["What is 1 + 1?", None]]


@pytest.mark.parametrize("error", [ValueError("bad value"), KeyError("boom"), ZeroDivisionError("oops")])
def test_any_failure_while_answering_leaves_a_well_formed_history(tiny_tokenizer, error):
    class FailingModel(ScriptedModel):
        def __call__(self, input_ids, attention_mask=None):
            if len(self.calls) == 2:
                raise error
            return super().__call__(input_ids, attention_mask)

    respond = app.make_bot_response(FailingModel(scripted_answer(tiny_tokenizer, "42", 32)), tiny_tokenizer, "cpu")
    history = [["What is 12 + 30?", "42"], ["Sort: 3 1 2", None]]
    with pytest.warns(UserWarning, match="The answer failed"):
        outputs = list(respond(history, *settings(delay=0.0)))
    new_history, chat, vis, _, box, status = outputs[-1]
    assert new_history == [["What is 12 + 30?", "42"]] and well_formed(new_history)
    assert [m["content"] for m in chat] == ["What is 12 + 30?", "42"]
    assert box == "Sort: 3 1 2"  # the message goes back into the box
    assert vis == {"__type__": "update"}  # the frames shown so far stay
    assert status["visible"] and str(error).strip("'") in status["value"]


def test_after_an_empty_answer_the_next_prompt_alternates_user_and_assistant(tiny_tokenizer):
    model = ScriptedModel(scripted_answer(tiny_tokenizer, "", 32))  # <|eot_id|> then EOS only
    respond = app.make_bot_response(model, tiny_tokenizer, "cpu")
    history = list(respond([["Hello", None]], *settings()))[-1][0]
    assert history == [["Hello", ""]] and well_formed(history)
    assert [m["content"] for m in app.to_chatbot(history)] == ["Hello", app.EMPTY_ANSWER]  # two bubbles
    history = app.user_message_submitted("What is 12 + 30?", history, *SETTINGS)[0]
    history = list(respond(history, *settings(), True))[-1][0]
    assert history == [["Hello", ""], ["What is 12 + 30?", ""]]
    prompt = tiny_tokenizer.decode(model.calls[-1][0, :-32].tolist())
    roles = re.findall(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>", prompt)
    assert roles == ["user", "assistant", "user", "assistant"]  # the last one is the generation prompt
    # single-turn (the embedded model's default): only the new question is sent
    list(respond([["Hello", ""], ["What is 12 + 30?", None]], *settings(), False))
    assert re.findall(r"header_id\|>(\w+)<", tiny_tokenizer.decode(model.calls[-1][0].tolist())) == [
        "user", "assistant"]  # fmt: skip


def test_frames_stream_while_the_model_works(tiny_tokenizer):
    """Frames reach the page before generation ends: the callback yields from the worker thread live."""
    G = 16
    release = threading.Event()

    class BlockingModel(ScriptedModel):
        def __call__(self, input_ids, attention_mask=None):
            if len(self.calls) == 2:  # third forward: wait until the page has shown frames
                assert release.wait(10), "the first frames were not shown while the model was working"
            return super().__call__(input_ids, attention_mask)

    model = BlockingModel(scripted_answer(tiny_tokenizer, "42", G))
    respond = app.make_bot_response(model, tiny_tokenizer, "cpu")
    seen, outputs = [], None
    for outputs in respond([["What is 12 + 30?", None]], G, 8, G, "", 0.0, 0.0, "random", 0.0):
        seen.append(outputs[2])
        if len(seen) == 3:
            release.set()  # the model is blocked in its third forward until the page got frame 2
    assert outputs[0][-1][1] and len(seen) == 1 + 8 + 1  # frames, then the final frame with the answer


def test_the_page_starts_from_the_checkpoints_sampler_settings_and_names_the_model(tiny_tokenizer):
    model = ScriptedModel(scripted_answer(tiny_tokenizer, "42", 32))
    model.config.sampler_defaults = {"gen_length": 48, "steps": 24, "block_length": 16, "remasking": "random"}
    demo = app.build_demo(model, tiny_tokenizer, "cpu", name="/some/folder/genjo-tiny-instruct")
    values = {b.elem_id: getattr(b, "value", None) for b in demo.blocks.values() if b.elem_id}
    assert (values["gen_length"], values["steps"], values["block_length"]) == (48, 24, 16)
    assert values["model-line"].startswith("**Model:** `genjo-tiny-instruct`")
    radios = [b for b in demo.blocks.values() if type(b).__name__ == "Radio"]
    assert radios[0].value == "random"


# ----------------------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def scripted_page(tiny_tokenizer):
    """The demo around a scripted model, launched in-process on a free port."""
    model = ScriptedModel(scripted_answer(tiny_tokenizer, "42", 32))
    demo = app.build_demo(model, tiny_tokenizer, "cpu")
    demo.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                           quiet=True, ssr_mode=False, css=app.CSS)  # fmt: skip
    yield url
    demo.close()


def test_two_sessions_keep_their_own_histories(scripted_page):
    client_lib = pytest.importorskip("gradio_client")
    clients = [client_lib.Client(scripted_page, verbose=False, analytics_enabled=False, download_files=False)
               for _ in range(2)]  # fmt: skip
    for client, message in zip(clients, ["What is 12 + 30?", "Sort: 3 1 2"]):
        client.predict(message, *settings(steps=16), api_name="/user_message_submitted")
    jobs = [c.submit(*settings(steps=16, delay=0.01), True, api_name="/bot_response") for c in clients]
    for job, message in zip(jobs, ["What is 12 + 30?", "Sort: 3 1 2"]):
        outputs = job.outputs() if job.result(timeout=60) else None
        chat, vis, text = outputs[-1][:3]
        assert [m["content"][0]["text"] for m in chat] == [message, "42"]
        assert text == "42"
        assert any(t["token"] == "[MASK]" for t in outputs[0][1]) and len(outputs) >= 1 + 16
    # a rejected message changes nothing and keeps its text; a good one carries its session's history only
    chat, box, _, status = clients[0].predict("What is 1 + 1?", *settings(constraints="1-delta"),
                                              api_name="/user_message_submitted")  # fmt: skip
    assert [m["content"][0]["text"] for m in chat] == ["What is 12 + 30?", "42"] and box == "What is 1 + 1?"
    assert "is not position:word" in status["value"] and status["visible"]
    chat = clients[0].predict("What is 1 + 1?", *settings(), api_name="/user_message_submitted")[0]
    assert [m["content"][0]["text"] for m in chat] == ["What is 12 + 30?", "42", "What is 1 + 1?"]
    # while that answer is being written, a new message is refused (the page's session is known)
    job = clients[0].submit(*settings(steps=16, delay=0.2), True, api_name="/bot_response")
    deadline = time.monotonic() + 30
    while not app.ANSWERING and time.monotonic() < deadline:
        time.sleep(0.01)
    chat, box, _, status = clients[0].predict("Sort: 2 1", *settings(), api_name="/user_message_submitted")
    assert "still being written" in status["value"] and box == "Sort: 2 1"
    assert job.result(timeout=60)[0][-1]["content"][0]["text"] == "42"
    deadline = time.monotonic() + 10
    while app.ANSWERING and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not app.ANSWERING  # the session is released when its answer ends
    chat, _, vis, box, _ = clients[0].predict(24, api_name="/clear_conversation")
    assert chat == [] and box == "" and [t["token"] for t in vis] == ["[MASK]"] * 24


def upload(url: str, content: bytes) -> tuple[int, bytes]:
    """POST one file to Gradio's upload route, as its page would; (HTTP status, body)."""
    boundary = "genjo-test-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="x.txt"\r\n'
            f"Content-Type: text/plain\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    request = urllib.request.Request(url.rstrip("/") + "/gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_demo_refuses_file_uploads_that_plain_gradio_would_store(tiny_tokenizer, tmp_path, monkeypatch):
    """The page takes no files: Gradio's own launch stores a posted file in its temporary folder; app.launch
    answers 403 and stores nothing, while the page itself keeps working (test_two_sessions_... runs on it)."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # read when a server starts
    model = ScriptedModel(scripted_answer(tiny_tokenizer, "42", 32))
    for launcher, stored in ((lambda demo, **kw: demo.launch(**kw), True), (app.launch, False)):
        demo = app.build_demo(model, tiny_tokenizer, "cpu").queue()
        _, url, _ = launcher(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                             quiet=True, ssr_mode=False)  # fmt: skip
        try:
            status, body = upload(url, b"nobody asked for this")
        finally:
            demo.close()
        files = [p for p in tmp_path.rglob("*") if p.is_file()]
        if stored:  # the issue: the route accepts and keeps the file
            assert status == 200 and any(p.read_bytes() == b"nobody asked for this" for p in files), (status, body)
            for p in files:
                p.unlink()
        else:
            assert status == 403 and b"no file uploads" in body and files == [], (status, body, files)


# Rectangles of the user's message texts and of every visible button in the chat (copy, share, clear).
CHAT_LAYOUT_JS = """() => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const chat = document.querySelector('#chatbot');
  return {chat: box(chat),
          texts: [...chat.querySelectorAll('[data-testid=user] .message-content')].map(box),
          buttons: [...chat.querySelectorAll('button')].filter(b => b.offsetParent !== null).map(box)};
}"""


def overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.slow
def test_a_person_chats_in_chromium_and_the_page_looks_right(instruct_model_path, tmp_path):
    """Start `python app.py`, pick an example in headless Chromium, press Send, watch the answer appear, check
    the layout (nothing covers the message, closed settings are one line, legend shown), then send a bad
    constraint. Screenshots are kept in tmp_path."""
    sync_api = require_chromium()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "TOKENIZERS_PARALLELISM": "false"}
    log = open(tmp_path / "app.log", "w")
    server = subprocess.Popen([sys.executable, "app.py", "--model", instruct_model_path, "--port", str(port)],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    names = ("start", "mid_denoising", "answer", "rejected", "settings")
    shots = {name: tmp_path / f"app_{name}.png" for name in names}
    print(f"screenshots in {tmp_path}")
    try:
        wait_for_http(url, server, tmp_path / "app.log")
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url, wait_until="load")
            page.wait_for_selector("#message textarea")
            model_line = page.inner_text("#model-line")
            settings_height = page.locator("#settings").bounding_box()["height"]
            page.screenshot(path=str(shots["start"]), full_page=True)
            page.locator("#examples").get_by_text("5:delta, 6:charlie").click()  # the example with word constraints
            page.wait_for_function("document.querySelector('#constraints textarea').value === '5:delta, 6:charlie'")
            picked = page.input_value("#message textarea")
            page.click("#send")
            states, mid_seen = [], False  # states: the visualised tokens, one list per distinct frame seen
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                tokens, busy = page.evaluate(VIS_STATE_JS)
                if tokens and (not states or tokens != states[-1]):
                    states.append(tokens)
                if not mid_seen and "[MASK]" in tokens and sum(t != "[MASK]" for t in tokens) > 2:
                    mid_seen = True
                    page.screenshot(path=str(shots["mid_denoising"]), full_page=True)
                if not busy and states and "[MASK]" not in tokens and any("[MASK]" in s for s in states):
                    break
                time.sleep(0.05)
            page.wait_for_selector("#chatbot [data-testid=bot]")
            page.screenshot(path=str(shots["answer"]), full_page=True)
            chat_text = page.inner_text("#chatbot")
            layout = page.evaluate(CHAT_LAYOUT_JS)
            legend = page.locator('#vis [data-testid="highlighted-text:category-legend"]')
            legend_text = legend.inner_text() if legend.is_visible() else ""

            page.fill("#constraints textarea", "x:y")  # a bad constraint: rejected with a visible message
            page.fill("#message textarea", "What is 12 + 30?")
            page.click("#send")
            page.wait_for_selector("#status", state="visible")
            time.sleep(0.5)
            page.screenshot(path=str(shots["rejected"]), full_page=True)
            status = page.inner_text("#status")
            box_after_rejection = page.input_value("#message textarea")
            bubbles_after_rejection = page.locator("#chatbot [data-testid=user]").count()
            page.get_by_text("Generation Settings").click()  # the sliders start at the checkpoint's settings
            page.wait_for_selector("#steps input[type=number]", state="visible")
            sliders = [page.input_value(f"#{name} input[type=number]") for name in ("gen_length", "steps")]
            page.screenshot(path=str(shots["settings"]), full_page=True)
            browser.close()
        assert "genjo-tiny-instruct" in model_line and "parameters" in model_line
        assert settings_height < 80, f"the closed settings accordion is {settings_height} px tall"
        assert picked == "Reverse: alpha bravo charlie delta echo foxtrot golf"
        assert mid_seen, f"never saw a partly revealed answer; states: {states[:5]}"
        assert states[0] == ["[MASK]"] * 32  # the checkpoint's gen_length
        assert all(len(s) == 32 for s in states), "a frame dropped slots"
        assert len([s for s in states if "[MASK]" in s]) >= 3  # several intermediate frames streamed
        # Without the constraints the model drops delta and charlie (7 words, one more than it learned); with them
        # they stand in place (positions count tokens: golf is go + l + f).
        assert states[-1][:8] == ["go", "l", "f", " foxtrot", " echo", " delta", " charlie", "EoT"]
        assert set(states[-1][8:]) == {"EOS"}
        assert "Reverse: alpha bravo charlie delta echo foxtrot golf" in chat_text
        assert "golf foxtrot echo delta charlie" in chat_text
        assert layout["texts"], "no user message in the chat"
        for text in layout["texts"]:  # the user's message is fully visible: inside the chat, under no button
            assert layout["chat"][0] <= text[0] and text[2] <= layout["chat"][2], (text, layout["chat"])
            assert not [b for b in layout["buttons"] if overlap(text, b)], (text, layout["buttons"])
        assert all(name in legend_text for name in ("mask", "revealed earlier", "word constraint", "end of text"))
        assert "'x:y' is not position:word" in status
        assert box_after_rejection == "What is 12 + 30?" and bubbles_after_rejection == 1
        assert sliders == ["32", "32"]
        assert all(os.path.getsize(path) > 10_000 for path in shots.values())
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


def wait_for_http(url: str, server: subprocess.Popen, log_path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"app.py exited early:\n{open(log_path).read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"app.py did not answer within {timeout} s:\n{open(log_path).read()}")


def test_the_constraint_example_puts_back_what_the_model_drops(tiny_tokenizer):
    """The demo's constraint example does something useful with the embedded model: the two words it drops
    from a 7-word reversal come back in place."""
    from conftest import require_checkpoint

    from genjo.constraints import parse_constraints
    from genjo.denoising_view import generate_response_with_visualization
    from genjo.loading import DEFAULT_MODEL, load_model

    model, tokenizer = load_model(require_checkpoint(DEFAULT_MODEL), device="cpu")
    question, constraints = app.TINY_EXAMPLES[-1]
    messages = [{"role": "user", "content": question}]
    settings = dict(gen_length=32, steps=32, block_length=32)
    _, free = generate_response_with_visualization(model, tokenizer, "cpu", messages, **settings)
    _, steered = generate_response_with_visualization(model, tokenizer, "cpu", messages, **settings,
                                                      constraints=parse_constraints(constraints))  # fmt: skip
    assert (free, steered) == ("golf foxtrot echo bravo alpha", "golf foxtrot echo delta charlie")
    assert f'"{free}"' in app.TINY_CONSTRAINT_EXAMPLE and f'"{steered}"' in app.TINY_CONSTRAINT_EXAMPLE


# Rectangles [left, top, right, bottom] of the chat and of the denoising panel, and the chat's placeholder.
PANELS_JS = """() => [...['#chatbot', '#vis'].map(s => { const r = document.querySelector(s).getBoundingClientRect();
  return [r.left, r.top, r.right, r.bottom]; }), document.querySelector('#chatbot').innerText]"""


@pytest.mark.slow
def test_the_placeholder_says_where_the_denoising_panel_is_at_desktop_and_phone_widths(scripted_page):
    """The empty chat's text places the panel "beside the chat or below it on a narrow screen": check both."""
    sync_api = require_chromium()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        layouts = {}
        for width in (1280, 420):
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(scripted_page, wait_until="load")
            page.wait_for_selector("#vis")
            layouts[width] = page.evaluate(PANELS_JS)
        browser.close()
    (chat, vis, text), (phone_chat, phone_vis, phone_text) = layouts[1280], layouts[420]
    assert "Denoising Process Visualization" in text and "below it on a narrow screen" in phone_text
    assert vis[0] >= chat[2] and vis[1] < chat[3], f"not beside the chat at 1280 px: chat {chat}, panel {vis}"
    assert phone_vis[1] >= phone_chat[3], f"not below the chat at 420 px: chat {phone_chat}, panel {phone_vis}"
