"""``python -m genjo.train``: see genjo/train/args.py for the stages and flags."""

import os

from ..cli import run_command
from .cli import main

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_command(main, prog="python -m genjo.train")
