"""The one exception type that means "the user asked for something that cannot work".

Entry points print a `UserError` as one line and exit with code 2 (the traceback only with
`--debug`); any other exception is a bug and keeps its traceback. Config, storage, artifact and
source errors derive from it, so the message each raises is what the user reads.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable


class UserError(Exception):
    """Bad input, config, credentials or location; the message says what is wrong and what to do."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors (a missing flag, a bad --shard) are one line and exit code 2,
    like every other user error; `--help` still shows the usage."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr, flush=True)
        raise SystemExit(2)


def print_user_error(err: BaseException) -> None:
    """The error as the one line an entry point prints: `error: ` and the message, whitespace folded."""
    print("error: " + " ".join(str(err).split()), file=sys.stderr, flush=True)


def exit_2_on_user_error(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command line's `main(argv)`: a `UserError` is one line on stderr and exit code 2, its traceback
    only with `--debug` among the arguments; any other exception is a bug and keeps its traceback."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except UserError as err:
            if "--debug" in (sys.argv[1:] if argv is None else argv):
                raise
            print_user_error(err)
            return 2

    return wrapped
