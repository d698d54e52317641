"""Errors a user can fix, shown as one clear message instead of a traceback.

A ``UserError`` says which file, key or row is wrong, why, and what to do. Command-line entry points
(``user_errors_exit``) and notebooks (``show_user_errors_briefly``) print only that message; the traceback, which
helps a developer and buries the message for everyone else, is shown when ``$LESIONSIGNAL_VERBOSE`` is set (or the
command's ``--verbose`` flag is given).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

VERBOSE_VARIABLE = "LESIONSIGNAL_VERBOSE"
# Exit status of a command stopped by a user error (argparse uses 2 for bad arguments: the same kind of mistake).
USER_ERROR_STATUS = 2


class UserError(Exception):
    """A problem in the user's parameters, files or order of steps; the message says what to do about it."""


def verbose() -> bool:
    return os.environ.get(VERBOSE_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def brief(err: BaseException) -> str:
    """The one message shown for a user error: its kind and its text."""
    return f"{type(err).__name__}: {err}"


def user_errors_exit(main: Callable[[], int], *, verbose_flag: bool = False) -> int:
    """Run a command's main; a user error prints one message on stderr and gives exit status 2."""
    try:
        return main()
    except UserError as err:
        if verbose_flag or verbose():
            traceback.print_exc()
        else:
            print(f"error: {brief(err)}", file=sys.stderr)
            print(f"(the traceback: set {VERBOSE_VARIABLE}=1 or pass --verbose)", file=sys.stderr)
        return USER_ERROR_STATUS


def _brief_traceback(shell: object, etype: type, value: BaseException, tb: object, tb_offset: int | None = None):
    if verbose():
        stb = shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)  # type: ignore[attr-defined]
    else:
        stb = [brief(value), f"(the traceback: set {VERBOSE_VARIABLE}=1 in the kernel's environment and re-run)"]
    # IPython only calls a custom handler; showing the error (and, in a kernel, marking the cell failed with its
    # name and value, which papermill reports) is the handler's job.
    shell._showtraceback(etype, value, stb)  # type: ignore[attr-defined]
    return stb


def show_user_errors_briefly() -> None:
    """In an IPython kernel, make a user error end the cell with its message alone (the cell still fails)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((UserError,), _brief_traceback)
