"""visualization/: recording a generation via step_callback, the log format, and the three renderings."""

import json
import os

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, EOT, ScriptedModel, require_chromium, scripted_answer
from PIL import Image, ImageSequence

from visualization import record, render
from visualization.rendering import (
    HEADER_BACKGROUND,
    HEADER_HEIGHT,
    MASK_BACKGROUND,
    box_colour,
    colour_difference,
    contrast_ratio,
    font,
    header_text,
    ink_on,
    legend_steps,
    legend_symbols,
    render_frame,
    render_grid,
    render_html,
    save_gif,
    text_colour,
)
from visualization.trajectory import Trajectory, read_sample_process, record_generation, write_sample_process

# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def trajectory(tiny_tokenizer) -> Trajectory:
    G = 16
    model = ScriptedModel(scripted_answer(tiny_tokenizer, "charlie bravo alpha", G))
    return record_generation(model, tiny_tokenizer, "Reverse: alpha bravo charlie", steps=8, gen_length=G,
                             block_length=G)  # fmt: skip


def test_record_knows_when_each_position_was_revealed(trajectory):
    assert trajectory.answer == "charlie bravo alpha" and trajectory.num_steps == 8
    assert trajectory.reveal_step == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8]  # strongest slots first
    assert all(0 < c <= 1 for c in trajectory.confidence)
    assert trajectory.texts[trajectory.tokens.index(EOT)] == "<|eot_id|>"
    assert trajectory.revealed(0) == [False] * 16 and trajectory.revealed(8) == [True] * 16


def test_json_and_sample_process_log_round_trip(trajectory, tmp_path):
    trajectory.to_json(tmp_path / "t.json")
    assert Trajectory.from_json(tmp_path / "t.json") == trajectory
    write_sample_process(trajectory, tmp_path / "sample_process.txt")
    lines = (tmp_path / "sample_process.txt").read_text().splitlines()
    assert len(lines) == 8 and lines[0].startswith("1, *")
    assert lines[0].count("*<|mdm_mask|>&") == 14 and "<|eot_id|>" not in lines[-1]
    parsed = read_sample_process(str(tmp_path / "sample_process.txt"))
    assert parsed.reveal_step == trajectory.reveal_step
    assert parsed.texts[0] == trajectory.texts[0]


def hex_of(rgb) -> str:
    return "#{:02X}{:02X}{:02X}".format(*rgb)


def test_colour_difference_and_contrast_are_the_standard_ones():
    assert colour_difference("#FFFFFF", "#000000") == pytest.approx(100, abs=1e-4)
    assert colour_difference("#FF0000", "#FF0000") == 0
    assert contrast_ratio("#FFFFFF", "#000000") == pytest.approx(21) and contrast_ratio("#777777", "#777777") == 1


@pytest.mark.parametrize("num_steps, apart", [(8, 12), (32, 3)])
def test_every_step_has_its_own_shade_and_the_legend_entries_stand_apart(num_steps, apart):
    """Any two steps differ by a visible amount (CIE76; about 2.3 is just noticeable): the previous 8-stop
    scheme gave steps 2 and 4 the same shade and steps 1 and 8 a difference of 5.6."""
    shades = [box_colour(s, num_steps) for s in range(1, num_steps + 1)]
    assert min(colour_difference(a, b) for i, a in enumerate(shades) for b in shades[i + 1 :]) >= apart
    legend = [MASK_BACKGROUND] + [box_colour(s, num_steps) for s in legend_steps(num_steps)]
    assert min(colour_difference(a, b) for a, b in zip(legend, legend[1:])) >= 15
    # far from the mask and from the white page; every label readable (WCAG contrast 4.5)
    assert min(colour_difference(MASK_BACKGROUND, c) for c in shades) >= 20
    assert colour_difference("#FFFFFF", shades[0]) >= 12
    assert min(contrast_ratio(c, ink_on(c)) for c in shades) >= 4.5
    # text style: darker with the step, every shade readable on white as large text (3:1)
    texts = [text_colour(s, num_steps) for s in range(1, num_steps + 1)]
    assert len(set(texts)) == num_steps and min(contrast_ratio(c, "#FFFFFF") for c in texts) >= 3


def test_the_question_is_drawn_on_a_header_line_above_the_canvas(trajectory):
    """The header band holds exactly the line "Q: <question>" (its ink spans that text's width); the canvas
    below it is the same whatever the question; a trajectory without a question has no header."""
    assert header_text("  Reverse:\n alpha ") == "Q: Reverse: alpha" and header_text("") == ""
    other = Trajectory(**{**trajectory.__dict__, "prompt": "Sort: 3 1 2"})
    for style in ("box", "text"):
        a, b = render_frame(trajectory, 4, style), render_frame(other, 4, style)
        band = (0, 0, a.width, HEADER_HEIGHT)
        assert a.crop(band).tobytes() != b.crop(band).tobytes()
        assert a.crop((0, HEADER_HEIGHT, *a.size)).tobytes() == b.crop((0, HEADER_HEIGHT, *b.size)).tobytes()
        for frame, traj in ((a, trajectory), (b, other)):
            assert hex_of(frame.getpixel((2, 2))) == HEADER_BACKGROUND
            ink = [x for x in range(frame.width) for y in range(8, HEADER_HEIGHT - 8)
                   if sum(frame.getpixel((x, y))) < 300]  # fmt: skip
            width = font(26).getlength(header_text(traj.prompt))
            assert abs(min(ink) - 30) <= 3 and abs(max(ink) - min(ink) - width) <= 6, (min(ink), max(ink), width)
    bare = Trajectory(**{**trajectory.__dict__, "prompt": ""})
    assert render_frame(bare, 4, "box").getpixel((2, 2)) == (255, 255, 255)
    assert render_frame(trajectory, 4, "box", header=False).tobytes() == render_frame(bare, 4, "box").tobytes()
    # the grid has one header over all its frames
    grid = render_grid(trajectory, [0, 8], "box", columns=2, scale=0.25)
    assert hex_of(grid.getpixel((2, 2))) == HEADER_BACKGROUND
    assert grid.size == (2 * 300 + 3 * 10, HEADER_HEIGHT + 200 + 2 * 10)


def test_the_legend_names_the_space_and_end_tokens(trajectory):
    spaced = Trajectory(prompt="Sort: 3 1", num_steps=2, tokens=[-1] * 5,
                        texts=["1", " ", "3", "<|eot_id|>", "<|endoftext|>"], reveal_step=[1, 2, 1, 2, 2],
                        confidence=[None] * 5)  # fmt: skip
    assert legend_symbols(spaced) == [("␣", "space"), ("EoT", "end of turn"), ("EOS", "end of text")]
    assert legend_symbols(trajectory) == [("EoT", "end of turn"), ("EOS", "end of text")]  # only those shown
    page = render_html(spaced, "box")
    for name, meaning in legend_symbols(spaced):
        assert f'<span class="tok">{name}</span> {meaning}' in page
    # the frame draws them as a second legend row under the colours: a frame without such tokens has one row
    plain = Trajectory(**{**spaced.__dict__, "texts": ["1", "2", "3", "4", "5"]})
    assert legend_symbols(plain) == []
    assert len(ink_runs(render_frame(spaced, 2), 600)) == 2 and len(ink_runs(render_frame(plain, 2), 600)) == 1


def ink_runs(image, top: int) -> list[tuple[int, int]]:
    """(first, last) of each run of rows below ``top`` that hold a non-white pixel."""
    rows = [
        y for y in range(top, image.height) if image.crop((0, y, image.width, y + 1)).getextrema() != ((255, 255),) * 3
    ]
    runs = []
    for y in rows:
        if runs and y == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], y)
        else:
            runs.append((y, y))
    return runs


def test_text_frames_show_the_masks_so_no_two_frames_are_alike(trajectory, tmp_path):
    """The first frame is not blank, and every step changes the picture (a mask goes, a token may come)."""
    frames = [render_frame(trajectory, k, "text") for k in range(trajectory.num_steps + 1)]
    assert frames[0].getcolors(1 << 16) and len(frames[0].getcolors(1 << 16)) > 1  # masks drawn
    assert all(a.tobytes() != b.tobytes() for a, b in zip(frames, frames[1:]))
    save_gif(trajectory, tmp_path / "t.gif", "text", frame_ms=50, hold_ms=500, scale=0.3)
    gif = Image.open(tmp_path / "t.gif")
    durations = [f.info["duration"] for f in ImageSequence.Iterator(gif)]
    assert durations == [50] * trajectory.num_steps + [500]  # no frame merged into a long blank hold


def test_renderings(trajectory, tmp_path):
    assert render_frame(trajectory, 0, "box").size == (1200, 800)
    assert render_frame(trajectory, 4, "text").size == (1200, 500)
    grid = render_grid(trajectory, [0, 4, 8], "box", columns=3, scale=0.25)
    assert grid.size[0] > 3 * 300
    save_gif(trajectory, tmp_path / "d.gif", "box", frame_ms=50, hold_ms=500, scale=0.3)
    gif = Image.open(tmp_path / "d.gif")
    assert gif.n_frames == 9
    page = render_html(trajectory, "box")
    assert page.count('class="frame frame-box"') == 9 and "<script>" in page and "http" not in page


def test_gif_frames_share_one_palette_that_keeps_every_shade(trajectory, tmp_path):
    """Every frame keeps the exact colours: the legend's small Mask swatch (also in the final frame, which has
    no masks), the header band, the white page, and in the final frame every step's shade."""
    save_gif(trajectory, tmp_path / "d.gif", "box", frame_ms=50, hold_ms=50, scale=0.5)
    frames = [f.convert("RGB") for f in ImageSequence.Iterator(Image.open(tmp_path / "d.gif"))]
    # first legend entry: 6 entries of 160 px centred in 1200 px, swatch centre 14 px in; the colour row is
    # 695 px down (a second row under it names EoT and EOS)
    swatch = (round((120 + 14) * 0.5), round(695 * 0.5))
    for frame in frames:
        assert hex_of(frame.getpixel(swatch)) == MASK_BACKGROUND
        assert hex_of(frame.getpixel((2, 2))) == HEADER_BACKGROUND and frame.getpixel((2, 40)) == (255, 255, 255)
    final = {hex_of(rgb) for _, rgb in frames[-1].getcolors(1 << 16)}
    assert {box_colour(s, trajectory.num_steps) for s in range(1, trajectory.num_steps + 1)} <= final


def test_scripts_record_and_render(instruct_model_path, tmp_path):
    out = tmp_path / "t.json"
    # The embedded model's sampler_defaults decode blocks of 32: 16 tokens take one block of 16.
    record.main(["--model", instruct_model_path, "--question", "Sort: 3 1 2", "--output", str(out),
                 "--log", str(tmp_path / "sample_process.txt"),
                 "--gen-length", "16", "--block-length", "16", "--steps", "8"])  # fmt: skip
    paths = {k: str(tmp_path / f"x.{k}") for k in ("html", "png", "gif")}
    render.main(
        [str(out), "--html", paths["html"], "--grid", paths["png"], "--gif", paths["gif"], "--gif-scale", "0.2"]
    )
    render.main([str(tmp_path / "sample_process.txt"), "--style", "text", "--grid", str(tmp_path / "t.png")])
    assert (
        hex_of(Image.open(tmp_path / "t.png").convert("RGB").getpixel((2, 2))) != HEADER_BACKGROUND
    )  # a log: no question
    render.main([str(tmp_path / "sample_process.txt"), "--style", "text", "--grid", str(tmp_path / "q.png"),
                 "--prompt", "Sort: 3 1 2"])  # fmt: skip
    assert hex_of(Image.open(tmp_path / "q.png").convert("RGB").getpixel((2, 2))) == HEADER_BACKGROUND
    assert all(os.path.getsize(p) > 1000 for p in paths.values())
    model = json.load(open(out))["settings"]["model"]
    assert model == os.path.basename(os.path.normpath(instruct_model_path))  # a name, not this machine's path


# The step of each visible frame, and the size of the first visible one.
FRAMES_JS = """() => {
  const shown = [...document.querySelectorAll('.frame')].filter(f => f.offsetParent !== null);
  const r = shown.length ? shown[0].getBoundingClientRect() : {width: 0, height: 0};
  return [shown.map(f => +f.dataset.step), r.width, r.height];
}"""


# Record the visible frames' steps after every change of a frame's hidden attribute.
WATCH_JS = """() => {
  window.seen = [];
  const visible = () => [...document.querySelectorAll('.frame')]
    .filter(f => f.offsetParent !== null).map(f => +f.dataset.step);
  new MutationObserver(() => {
    const now = visible();
    if (!window.seen.length || window.seen.at(-1).join() !== now.join()) window.seen.push(now);
  }).observe(document.body, {attributes: true, subtree: true, attributeFilter: ['hidden']});
}"""


# The page's layout at the viewport's width: horizontal overflow, and the leftmost and rightmost edges of
# what it shows (the question line, the controls, the visible frame and the legends).
MARGINS_JS = """() => {
  const boxes = [...document.querySelectorAll('p, .controls, .legend, .frame')]
    .filter(e => e.offsetParent !== null).map(e => e.getBoundingClientRect());
  return [document.documentElement.scrollWidth, Math.min(...boxes.map(r => r.left)),
          Math.max(...boxes.map(r => r.right))];
}"""


@pytest.mark.slow
@pytest.mark.parametrize("style", ["box", "text"])
def test_html_page_plays_pauses_resumes_and_keeps_a_margin_on_a_phone(trajectory, tmp_path, style):
    """One frame at a time; Play turns into Pause and runs on from the step shown, Pause stops there, Play
    resumes from it (step 0 again only from the last step); the slider pauses and shows any step; at 420 px
    the page keeps a margin and does not scroll sideways."""
    sync_api = require_chromium()
    last = trajectory.num_steps
    path = tmp_path / f"denoising_{style}.html"
    path.write_text(render_html(trajectory, style), encoding="utf-8")
    print(f"screenshots in {tmp_path}")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(path.as_uri(), wait_until="load")
        shown, width, height = page.evaluate(FRAMES_JS)
        page.screenshot(path=str(tmp_path / f"{style}_last.png"), full_page=True)
        assert shown == [last], f"frames {shown} visible at once"  # opens on the final one
        assert width > 600 and height > 40, f"the frame is clipped to {width}x{height}"
        button = [page.inner_text("#play")]
        page.evaluate(WATCH_JS)
        page.click("#play")  # from the last step: starts again from 0
        button.append(page.inner_text("#play"))
        page.wait_for_function("window.seen.length && window.seen.at(-1)[0] >= 3")
        page.click("#play")  # Pause
        button.append(page.inner_text("#play"))
        paused_at = page.evaluate(FRAMES_JS)[0]
        page.wait_for_timeout(500)  # over three frame intervals
        still = page.evaluate(FRAMES_JS)[0]
        page.screenshot(path=str(tmp_path / f"{style}_paused.png"), full_page=True)
        page.click("#play")  # resumes from the step shown
        button.append(page.inner_text("#play"))
        page.wait_for_function(f"window.seen.at(-1).join() === '{last}'")
        page.wait_for_function("document.getElementById('play').textContent === 'Play'")  # stops at the end
        button.append(page.inner_text("#play"))
        seen = page.evaluate("window.seen")
        page.click("#play")  # at the end: starts again from 0
        page.wait_for_function(f"window.seen.length > {len(seen)}")
        restart = page.evaluate(f"window.seen[{len(seen)}]")
        page.fill("#step", "3")  # the slider shows any step, and pauses
        page.dispatch_event("#step", "input")
        by_slider = page.evaluate(FRAMES_JS)[0]
        label, button_after_slider = page.inner_text("#label"), page.inner_text("#play")
        page.wait_for_timeout(400)
        by_slider_later = page.evaluate(FRAMES_JS)[0]
        phone = browser.new_page(viewport={"width": 420, "height": 900})
        phone.goto(path.as_uri(), wait_until="load")
        scroll_width, left, right = phone.evaluate(MARGINS_JS)
        phone.screenshot(path=str(tmp_path / f"{style}_420.png"), full_page=True)
        browser.close()
    assert button == ["Play", "Pause", "Play", "Pause", "Play"]
    assert all(len(steps) == 1 for steps in seen), "several frames visible at once"
    assert 3 <= paused_at[0] < last and still == paused_at, f"paused at {paused_at}, then showed {still}"
    # one run through every step, though paused on the way: Play resumed, it did not restart
    assert [steps[0] for steps in seen] == list(range(last + 1))
    assert restart == [0]
    assert by_slider == by_slider_later == [3] and label == f"step 3 / {last}" and button_after_slider == "Play"
    assert scroll_width <= 420 and left >= 12 and right <= 420 - 12, (scroll_width, left, right)
