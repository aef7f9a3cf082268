"""visualization/: recording a generation via step_callback, the log format, and the three renderings."""

import os

import pytest
from conftest import EOT, ScriptedModel, scripted_answer
from PIL import Image

from visualization import record, render
from visualization.rendering import BOX_STOPS, box_colour, render_frame, render_grid, render_html, save_gif, text_colour
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


def test_colours_follow_the_spec():
    assert box_colour(0, 64) == BOX_STOPS[0] == "#F0F8FF" and box_colour(64, 64) == BOX_STOPS[6]
    assert box_colour(1, 64) != box_colour(0, 64)  # odd steps are blended half-way to the next stop
    assert text_colour(0, 64) != text_colour(64, 64)


def test_renderings(trajectory, tmp_path):
    assert render_frame(trajectory, 0, "box").size == (1200, 800)
    assert render_frame(trajectory, 4, "text").size == (1200, 500)
    grid = render_grid(trajectory, [0, 4, 8], "box", columns=3, scale=0.25)
    assert grid.size[0] > 3 * 300
    save_gif(trajectory, tmp_path / "d.gif", "box", frame_ms=50, hold_ms=500, scale=0.3)
    gif = Image.open(tmp_path / "d.gif")
    assert gif.n_frames == 9
    page = render_html(trajectory, "box")
    assert page.count('class="frame box"') == 9 and "<script>" in page and "http" not in page


def test_scripts_record_and_render(instruct_model_path, tmp_path):
    out = tmp_path / "t.json"
    record.main(["--model", instruct_model_path, "--question", "Sort: 3 1 2", "--out", str(out),
                 "--log", str(tmp_path / "sample_process.txt"), "--gen-length", "16", "--steps", "8"])  # fmt: skip
    paths = {k: str(tmp_path / f"x.{k}") for k in ("html", "png", "gif")}
    render.main(
        [str(out), "--html", paths["html"], "--grid", paths["png"], "--gif", paths["gif"], "--gif-scale", "0.2"]
    )
    render.main([str(tmp_path / "sample_process.txt"), "--style", "text", "--grid", str(tmp_path / "t.png")])
    assert all(os.path.getsize(p) > 1000 for p in paths.values())
