"""The command line (``./dev invoke …``, console script ``amltrain``): invoke's own Program, owned so that every
failure ends the same way, configuration included.

Why a Program subclass and not just the tasks' decorator: invoke imports tasks.py and then loads invoke.yaml,
the ``-f`` file and the INVOKE_* variables itself, before and outside any task, and turns only its own exceptions
into clean exits. A malformed file, a value of the wrong type or an unknown option would otherwise end in a
parser traceback, a silently ignored file or a line unlike every other failure. Here every anticipated failure,
wherever it happens (loading, parsing, a task), becomes ``error: <message>`` on stderr, masked and cut at a word
(``masking.error_line``), with the error's exit code; ``AMLTRAIN_DEBUG=1`` shows the traceback instead.

Everything else is invoke's: tasks.py is found the same way (from the current folder; ``-c``, ``-r``), its
invoke.yaml is the project configuration, and ``--list``, ``--help``, ``-f`` and ``--complete`` behave as they do
for ``invoke``. Plain ``invoke`` in an activated virtualenv stays stock invoke: tasks still fail in one line
(``tasks.one_line_errors``), but a bad configuration file or variable is invoke's traceback there.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from importlib.metadata import PackageNotFoundError, version

from invoke import Exit, ParseError, Program

from .config import ProjectConfig
from .errors import ToolkitError
from .masking import error_line


@contextlib.contextmanager
def _one_line():
    """invoke's parse errors (unknown task or option, missing value) and its messages that end the program
    (no tasks.py found) as ToolkitErrors, so they come out like every other failure."""
    try:
        yield
    except ParseError as exc:
        context = getattr(exc, "context", None)
        name = getattr(context, "name", None)
        hint = f"`invoke {name} --help` lists its options" if name else \
            "`invoke --list` lists the tasks, `invoke --help` the core options"
        message = str(exc).rstrip("!").strip()
        flag = _NEEDED_VALUE.match(message)
        if flag:  # invoke names the option by its internal repr
            short = f" (-{flag.group(2)})" if flag.group(2) else ""
            message = f"option --{flag.group(1).replace('_', '-')}{short} needs a value"
        raise ToolkitError(message, hint) from None
    except Exit as exc:
        if exc.message and exc.code:
            message = str(exc.message).rstrip("!")
            hint = ("run it in the project folder, where tasks.py is (./dev does), or give -r FOLDER"
                    if message.startswith("Can't find any collection") else None)
            raise ToolkitError(message, hint, exit_code=exc.code) from None
        raise


_NEEDED_VALUE = re.compile(r"Flag <Argument: (\w+)(?: \((\w)\))?> needed value")


class AmltrainProgram(Program):
    """invoke's Program with one exit path for failures: ``error: …`` and the error's exit code."""

    def run(self, argv=None, exit: bool = True) -> None:
        try:
            super().run(argv, exit)
        except ToolkitError as exc:
            if os.environ.get("AMLTRAIN_DEBUG"):
                raise
            print(error_line(str(exc)), file=sys.stderr)
            if exit:
                sys.exit(exc.exit_code)
        except BrokenPipeError:  # `invoke --list | head`: the reader left; end as a process killed by SIGPIPE would
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
            sys.exit(141)

    def parse_core(self, argv) -> None:
        with _one_line():
            super().parse_core(argv)

    def parse_collection(self) -> None:
        with _one_line():
            super().parse_collection()

    def parse_tasks(self) -> None:
        with _one_line():
            super().parse_tasks()

    def parse_cleanup(self) -> None:
        with _one_line():
            super().parse_cleanup()


def program() -> AmltrainProgram:
    try:
        own = version("amltrain")
    except PackageNotFoundError:  # run from a checkout that was never installed
        own = "unknown"
    return AmltrainProgram(name="amltrain", version=f"{own} (invoke {version('invoke')})", binary="invoke",
                           binary_names=["invoke", "amltrain"], config_class=ProjectConfig)


def main() -> None:
    program().run()


if __name__ == "__main__":
    main()
