"""Record a Genjo generation step by step and draw its denoising (SPEC §8).

python -m visualization.record --question "Reverse: alpha bravo charlie" --out trajectory.json
python -m visualization.render trajectory.json --html page.html --grid grid.png --gif denoise.gif
"""
