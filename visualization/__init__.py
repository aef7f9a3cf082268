"""Record a Genjo generation step by step and draw its denoising as pictures (box and text styles, HTML, PNG, GIF).

python -m visualization.record --question "Reverse: alpha bravo charlie" --out trajectory.json
python -m visualization.render trajectory.json --html page.html --grid grid.png --gif denoise.gif
"""
