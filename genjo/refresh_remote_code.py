"""Copy the model code into every embedded checkpoint, after an edit of the modeling or configuration file.

    python -m genjo.refresh_remote_code            # rewrites the stale copies, prints what it changed
    python -m genjo.refresh_remote_code --check    # exit 1 if a copy is stale (what the test checks)

Each folder under ``genjo/checkpoints/`` carries its own copy of ``modeling_genjo.py`` and
``configuration_genjo.py`` (its ``auto_map``), so that ``AutoModel.from_pretrained(folder, trust_remote_code=True)``
loads it with transformers alone. A copy must equal the package's source byte for byte.
"""

import argparse
import sys
from pathlib import Path

from .cli import run_command

PACKAGE = Path(__file__).resolve().parent
CHECKPOINTS = PACKAGE / "checkpoints"
CODE_FILES = ("modeling_genjo.py", "configuration_genjo.py")
COMMAND = "python -m genjo.refresh_remote_code"


def stale_copies() -> list[Path]:
    """The copies under genjo/checkpoints/*/ that differ from the package's source (or are missing)."""
    stale = []
    for folder in sorted(p for p in CHECKPOINTS.iterdir() if (p / "config.json").exists()):
        for name in CODE_FILES:
            copy = folder / name
            if not copy.exists() or copy.read_bytes() != (PACKAGE / name).read_bytes():
                stale.append(copy)
    return stale


def refresh() -> list[Path]:
    """Rewrite every stale copy with the package's source; returns the files written."""
    written = stale_copies()
    for copy in written:
        copy.write_bytes((PACKAGE / copy.name).read_bytes())
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale copies; exit 1 if any (default: off)")
    args = parser.parse_args(argv)
    files = stale_copies() if args.check else refresh()
    for path in files:
        print(f"{'stale' if args.check else 'refreshed'}: {path}")
    if not files:
        print("every embedded checkpoint's model code is up to date")
    return 1 if args.check and files else 0


if __name__ == "__main__":
    sys.exit(run_command(main, prog=COMMAND))
