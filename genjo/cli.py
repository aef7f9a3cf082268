"""What every command line shares: a bad input ends the run with one line, as argparse's own errors do.

    if __name__ == "__main__":
        run_command(main)                                   # generate.py: error: steps (0) must be ...

Bad input is a ValueError that says what was wrong and how to fix it (or a FileNotFoundError /
FileExistsError for a path the user named): its message is the whole story, so the command prints
``PROG: error: MESSAGE`` on stderr and exits with status 2, argparse's convention. Any other exception is
unexpected (a bug, the machine) and keeps its full traceback.
"""

import os
import sys
from collections.abc import Callable
from typing import Any, Optional

# The exceptions that report a user's input; everything else keeps its traceback.
INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)
INPUT_ERROR_STATUS = 2  # argparse's exit status for a usage error


def run_command(main: Callable[..., Any], *args, prog: Optional[str] = None) -> Any:
    """main(*args), with an input error printed as ``PROG: error: MESSAGE`` and exit status 2.

    prog: the command's name in the message (default: the script's file name, as argparse shows it; pass
    e.g. "python -m genjo.train" for a module run with -m). Returns main's result.
    """
    try:
        return main(*args)
    except INPUT_ERRORS as error:
        name = prog or os.path.basename(sys.argv[0]) or "genjo"
        message = str(error) if not isinstance(error, OSError) or not error.filename else _os_message(error)
        print(f"{name}: error: {message}", file=sys.stderr, flush=True)
        sys.exit(INPUT_ERROR_STATUS)


def _os_message(error: OSError) -> str:
    """An OSError raised by the OS itself ("[Errno 2] No such file or directory: 'x'") without its errno."""
    return f"{error.strerror}: {error.filename}" if error.strerror else str(error)
