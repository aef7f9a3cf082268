"""Draw a recorded trajectory as an HTML page, a PNG grid of steps, single PNG frames and/or an animated GIF.

python -m visualization.render trajectory.json --style box --html page.html --grid grid.png --gif denoise.gif
python -m visualization.render sample_process.txt --style text --frames-dir frames/
"""

import argparse
import os

from visualization.rendering import STYLES, render_frame, render_grid, render_html, save_gif
from visualization.trajectory import Trajectory, read_sample_process


def load(path: str) -> Trajectory:
    """A trajectory JSON, or a sample_process.txt log (by extension)."""
    return read_sample_process(path) if path.endswith(".txt") else Trajectory.from_json(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trajectory", help="JSON from visualization.record, or a sample_process.txt log")
    parser.add_argument(
        "--style", choices=STYLES, default="box", help="box (paper) or text (article) (default: %(default)s)"
    )
    parser.add_argument(
        "--prompt", help="the question shown in the header (default: the trajectory's own; none for a .txt log)"
    )
    parser.add_argument("--html", help="write a self-contained HTML page here (default: none)")
    parser.add_argument("--grid", help="write a PNG grid of --grid-steps here (default: none)")
    parser.add_argument("--grid-steps", type=int, nargs="+", help="steps in the grid (default: 6 evenly spaced)")
    parser.add_argument("--grid-columns", type=int, default=3, help="frames per grid row (default: %(default)s)")
    parser.add_argument(
        "--grid-scale", type=float, default=0.5, help="size of each grid frame, 1 = full (default: %(default)s)"
    )
    parser.add_argument("--gif", help="write an animated GIF of every step here (default: none)")
    parser.add_argument("--frame-ms", type=int, default=150, help="GIF: duration of each frame (default: %(default)s)")
    parser.add_argument(
        "--hold-ms", type=int, default=2000, help="GIF: duration of the final frame (default: %(default)s)"
    )
    parser.add_argument(
        "--gif-scale", type=float, default=0.6, help="GIF: size of the frames, 1 = full (default: %(default)s)"
    )
    parser.add_argument("--frames-dir", help="write every frame as step_XXX.png into this folder (default: none)")
    args = parser.parse_args(argv)
    if not any([args.html, args.grid, args.gif, args.frames_dir]):
        parser.error("nothing to do: give at least one of --html, --grid, --gif, --frames-dir.")

    trajectory = load(args.trajectory)
    if args.prompt is not None:
        trajectory.prompt = args.prompt
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(render_html(trajectory, args.style))
    if args.grid:
        render_grid(trajectory, args.grid_steps, args.style, args.grid_columns, args.grid_scale).save(
            args.grid, optimize=True
        )
    if args.gif:
        save_gif(trajectory, args.gif, args.style, args.frame_ms, args.hold_ms, args.gif_scale)
    if args.frames_dir:
        os.makedirs(args.frames_dir, exist_ok=True)
        for step in range(trajectory.num_steps + 1):
            render_frame(trajectory, step, args.style).save(os.path.join(args.frames_dir, f"step_{step:03d}.png"))
    for path in (args.html, args.grid, args.gif, args.frames_dir):
        if path:
            print(f"wrote {path}")


if __name__ == "__main__":
    from genjo.cli import run_command  # here: importing genjo loads transformers

    run_command(main)
