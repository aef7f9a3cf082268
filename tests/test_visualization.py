"""visualization/: recording a generation via step_callback, the log format, and the three renderings."""

import json
import os

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, EOT, ScriptedModel, require_chromium, scripted_answer
from PIL import Image, ImageSequence

from visualization import record, render
from visualization.rendering import (
    BOX_STOPS,
    MASK_BACKGROUND,
    box_colour,
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


def colour_distance(a: str, b: str) -> float:
    rgb = [tuple(int(c.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4)) for c in (a, b)]
    return sum((x - y) ** 2 for x, y in zip(*rgb)) ** 0.5


def test_colours_darken_with_the_step_and_masks_stand_apart():
    assert box_colour(0, 64) == BOX_STOPS[0] == "#F0F8FF" and box_colour(64, 64) == BOX_STOPS[6]
    assert box_colour(1, 64) != box_colour(0, 64)  # odd steps are blended half-way to the next stop
    assert text_colour(0, 64) != text_colour(64, 64)
    # the mask is warm, every step a blue (red < blue), and no step shade comes near it (they were 9 apart)
    mask = MASK_BACKGROUND.lstrip("#")
    assert int(mask[:2], 16) > int(mask[4:], 16)
    assert all(int(box_colour(s, 32)[1:3], 16) < int(box_colour(s, 32)[5:], 16) for s in range(1, 33))
    assert min(colour_distance(MASK_BACKGROUND, box_colour(s, 32)) for s in range(1, 33)) > 30


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
    """The legend's small Mask swatch keeps its colour in every frame, also the final one without masks."""
    save_gif(trajectory, tmp_path / "d.gif", "box", frame_ms=50, hold_ms=50, scale=0.5)
    frames = [f.convert("RGB") for f in ImageSequence.Iterator(Image.open(tmp_path / "d.gif"))]
    # first legend entry: 6 entries of 160 px centred in 1200 px, swatch centre 14 px in, 735 px down
    swatch = (round((120 + 14) * 0.5), round(735 * 0.5))
    for frame in frames:
        assert colour_distance("#{:02X}{:02X}{:02X}".format(*frame.getpixel(swatch)), MASK_BACKGROUND) < 12
        assert frame.getpixel((2, 2)) == (255, 255, 255)


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


@pytest.mark.slow
@pytest.mark.parametrize("style", ["box", "text"])
def test_html_page_shows_one_frame_at_a_time_and_play_advances_it(trajectory, tmp_path, style):
    sync_api = require_chromium()
    path = tmp_path / f"denoising_{style}.html"
    path.write_text(render_html(trajectory, style), encoding="utf-8")
    print(f"screenshots in {tmp_path}")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(path.as_uri(), wait_until="load")
        shown, width, height = page.evaluate(FRAMES_JS)
        page.screenshot(path=str(tmp_path / f"{style}_last.png"), full_page=True)
        assert shown == [trajectory.num_steps], f"frames {shown} visible at once"  # opens on the final one
        assert width > 600 and height > 40, f"the frame is clipped to {width}x{height}"
        page.evaluate(WATCH_JS)
        page.click("#play")
        page.wait_for_timeout(300)
        page.screenshot(path=str(tmp_path / f"{style}_playing.png"), full_page=True)
        page.wait_for_function(f"window.seen.length > 1 && window.seen.at(-1).join() === '{trajectory.num_steps}'")
        seen = page.evaluate("window.seen")
        page.fill("#step", "3")  # the slider shows any step
        page.dispatch_event("#step", "input")
        by_slider = page.evaluate(FRAMES_JS)[0]
        label = page.inner_text("#label")
        browser.close()
    assert all(len(steps) == 1 for steps in seen), "several frames visible at once"
    assert [steps[0] for steps in seen] == list(range(trajectory.num_steps + 1))  # Play went through every step
    assert by_slider == [3] and label == f"step 3 / {trajectory.num_steps}"
