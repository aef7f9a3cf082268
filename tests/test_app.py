"""app.py: the callbacks (scripted model), the page through gradio_client, and a person's visit in Chromium."""

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import MASK, ScriptedModel, scripted_answer

import app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
# The tokens shown by the visualisation, and whether its event is still running.
VIS_STATE_JS = """() => [
  [...document.querySelectorAll('#vis .token .text')].map(e => e.innerText),
  !document.querySelector('#vis [data-testid=status-tracker]').classList.contains('hide')]"""
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage"]  # fmt: skip


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def question(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ----------------------------------------------------------------------------- pure functions


def test_parse_constraints_follows_the_spec():
    assert app.parse_constraints("0:Once, 5:upon, 10:time") == {0: "Once", 5: "upon", 10: "time"}
    assert app.parse_constraints("3:a:b, x:y, -1:neg, 4: , 7") == {3: "a:b"}  # bad parts skipped silently
    assert app.parse_constraints("2:one, 2:two") == {2: "two"}  # a later duplicate wins
    assert app.parse_constraints("") == {} and app.parse_constraints(None) == {}


def test_confidence_colours_and_history_format():
    assert [app.confidence_colour(c) for c in (0.0, 0.29, 0.3, 0.69, 0.7, 1.0)] == [
        "#FF6666", "#FF6666", "#FFAA33", "#FFAA33", "#66CC66", "#66CC66"]  # fmt: skip
    pairs = [["hi", "hello"], ["again", None]]
    assert app.format_chat_history(pairs) == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"}]  # fmt: skip


def test_settings_are_checked_with_messages_that_say_what_to_fix():
    assert app.check_settings(64, 32, 32, 0.0, 0.0, "low_confidence") == (64, 32, 32)
    assert app.check_settings(16, 30, 128, 0.0, 0.0, "random") == (16, 30, 16)  # block clamped to the answer
    assert app.check_settings(64, 30, 8, 0.0, 0.0, "random") == (64, 24, 8)  # max(1, steps // blocks) per block
    for args, message in [((64, 32, 24, 0.0, 0.0, "random"), "multiple of Block Length"),
                          ((64, 32, 32, -1.0, 0.0, "random"), "Temperature"),
                          ((64, 32, 32, 0.0, 0.0, "top_k"), "Remasking Strategy")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            app.check_settings(*args)


# ----------------------------------------------------------------------------- the generation callback


def test_frames_show_masks_then_tokens_coloured_by_confidence(tiny_tokenizer):
    G = 16
    model = ScriptedModel(scripted_answer(tiny_tokenizer, "42", G))
    frames, text = app.generate_response_with_visualization(model, tiny_tokenizer, "cpu", question("What is 12 + 30?"),
                                                            gen_length=G, steps=8, block_length=G)  # fmt: skip
    assert text == "42" and len(frames) == 1 + 8  # all-mask state, then one frame per step
    assert frames[0] == [("[MASK]", "#444444")] * G
    assert all(len(f) == G for f in frames)
    masks = [sum(t == "[MASK]" for t, _ in f) for f in frames]
    assert masks == [16, 14, 12, 10, 8, 6, 4, 2, 0]  # 2 per step, the linear schedule
    # step 1 reveals the two strongest slots (0, 1: "4", "2"), new tokens coloured by confidence
    assert [t for t, _ in frames[1][:2]] == ["4", "2"]
    assert {c for _, c in frames[1][:2]} <= {"#FF6666", "#FFAA33", "#66CC66"}
    assert {c for _, c in frames[2][:2]} == {"#6699CC"}  # revealed earlier: blue


def test_constraints_hold_their_slots_and_count_as_prompt_for_cfg(tiny_tokenizer):
    G = 16
    model = ScriptedModel(scripted_answer(tiny_tokenizer, "42", G))
    frames, text = app.generate_response_with_visualization(
        model, tiny_tokenizer, "cpu", question("What is 12 + 30?"), gen_length=G, steps=8, block_length=G,
        constraints={5: "Paris", 40: "dropped"}, cfg_scale=1.0)  # fmt: skip
    word = tiny_tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    L = model.calls[0].shape[1] - G
    assert len(frames) == 2 + 8  # all-mask state, the constraints, then one frame per step
    assert [c for t, c in frames[1] if t != "[MASK]"] == ["#6699CC"] * len(word)
    assert "".join(t for t, _ in frames[-1][5 : 5 + len(word)]) == " Paris"
    assert "Paris" in text
    for call in model.calls:  # CFG runs conditional and unconditional rows as one batch
        cond, uncond = call
        assert cond[L + 5 : L + 5 + len(word)].tolist() == word  # the model always reads the constraint
        assert (uncond[L + 5 : L + 5 + len(word)] == MASK).all()  # masked with the prompt when unconditional
        assert (uncond[:L] == MASK).all()


def test_bot_response_shows_errors_in_the_page_and_keeps_the_history(tiny_tokenizer):
    model = ScriptedModel(scripted_answer(tiny_tokenizer, "42", 64))
    respond = app.make_bot_response(model, tiny_tokenizer, "cpu")
    history = [["What is 12 + 30?", "42"], ["Sort: 3 1 2", None]]
    outputs = list(respond(history, 64, 32, "", 0.0, 0.0, 0.0, 24, "low_confidence"))  # 64 % 24 != 0
    new_history, chat, vis, _ = outputs[-1]
    assert vis == [("Error: Generation Length (64) must be a multiple of Block Length (24).", "red")]
    assert new_history == [["What is 12 + 30?", "42"]]
    assert app.user_message_submitted("   ", new_history, 64, 32, "", 0.1)[0] == new_history  # blank: no change


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
    for outputs in respond([["What is 12 + 30?", None]], G, 8, "", 0.0, 0.0, 0.0, G, "random"):
        seen.append(outputs[2])
        if len(seen) == 3:
            release.set()  # the model is blocked in its third forward until the page got frame 2
    assert outputs[0][-1][1] and len(seen) == 1 + 8 + 1  # frames, then the final frame with the answer


# ----------------------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def scripted_page(tiny_tokenizer):
    """The demo around a scripted model, launched in-process on a free port."""
    model = ScriptedModel(scripted_answer(tiny_tokenizer, "42", 32))
    demo = app.build_demo(model, tiny_tokenizer, "cpu")
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            ssr_mode=False, css=app.CSS)  # fmt: skip
    yield url
    demo.close()


def test_two_sessions_keep_their_own_histories(scripted_page):
    client_lib = pytest.importorskip("gradio_client")
    clients = [client_lib.Client(scripted_page, verbose=False, analytics_enabled=False, download_files=False)
               for _ in range(2)]  # fmt: skip
    for client, message in zip(clients, ["What is 12 + 30?", "Sort: 3 1 2"]):
        client.predict(message, 32, 16, "", 0.0, api_name="/user_message_submitted")
    jobs = [c.submit(32, 16, "", 0.01, 0.0, 0.0, 32, "low_confidence", api_name="/bot_response") for c in clients]
    for job, message in zip(jobs, ["What is 12 + 30?", "Sort: 3 1 2"]):
        outputs = job.outputs() if job.result(timeout=60) else None
        chat, vis, text = outputs[-1]
        assert [m["content"][0]["text"] for m in chat] == [message, "42"]
        assert text == "42"
        assert any(t["token"] == "[MASK]" for t in outputs[0][1]) and len(outputs) >= 1 + 16
    # a second message in the first session carries its own history only
    chat = clients[0].predict("What is 1 + 1?", 32, 16, "", 0.0, api_name="/user_message_submitted")[0]
    assert [m["content"][0]["text"] for m in chat] == ["What is 12 + 30?", "42", "What is 1 + 1?"]
    cleared = clients[0].predict(api_name="/clear_conversation")
    assert cleared[0] == []


@pytest.mark.slow
def test_a_person_chats_in_chromium_and_watches_the_denoising(instruct_model_path, tmp_path):
    """Start `python app.py`, type a question in headless Chromium, press Send and watch the answer appear."""
    if not os.path.exists(CHROMIUM):
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "TOKENIZERS_PARALLELISM": "false"}
    log = open(tmp_path / "app.log", "w")
    server = subprocess.Popen([sys.executable, "app.py", "--model", instruct_model_path, "--port", str(port)],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for_http(url, server, tmp_path / "app.log")
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url, wait_until="load")
            page.wait_for_selector("#message textarea")
            page.fill("#message textarea", "Reverse: alpha bravo charlie")
            page.click("#send")
            states, mid_shot = [], None  # states: the visualised tokens, one list per distinct frame seen
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                tokens, busy = page.evaluate(VIS_STATE_JS)
                if tokens and (not states or tokens != states[-1]):
                    states.append(tokens)
                if mid_shot is None and "[MASK]" in tokens and any(t != "[MASK]" for t in tokens):
                    mid_shot = tmp_path / "app_mid_denoising.png"
                    page.screenshot(path=str(mid_shot), full_page=True)
                if not busy and states and "[MASK]" not in tokens and any("[MASK]" in s for s in states):
                    break
                time.sleep(0.05)
            final_shot = tmp_path / "app_final.png"
            page.screenshot(path=str(final_shot), full_page=True)
            chat_text = page.evaluate("document.querySelector('#chatbot').innerText")
            browser.close()
        print(f"screenshots: {mid_shot} {final_shot}")
        assert mid_shot is not None, f"never saw a partly revealed answer; states: {states[:5]}"
        assert states[0] == ["[MASK]"] * 64 and "[MASK]" not in states[-1]
        assert len([s for s in states if "[MASK]" in s]) >= 3  # several intermediate frames streamed
        assert "Reverse: alpha bravo charlie" in chat_text
        assert os.path.getsize(mid_shot) > 10_000
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
