"""The command group's safety net: a crash exits 3 with one line (never 1, which means "findings").

Also settles the standard streams before anything is printed: a closed stdout (`>&-`) becomes /dev/null (the
caller asked for the exit code only), an encoding that cannot show a character prints an escape instead of
raising, and a failed write to stdout (a full disk) is one error line and exit 2. A pipe whose reader went
away (`gradcheck inspect RUN | head -1`) stops gradcheck quietly with exit 141 (128 + SIGPIPE), the status a
shell reports for git, seq or cat stopped by the same pipe: neither 0 nor 1, so it never passes for a verdict.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import click

EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 3, 130
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: what `$?` shows for a tool killed by SIGPIPE
DEBUG_ENV = "GRADCHECK_DEBUG"


class StdoutError(OSError):
    """Writing to standard output failed: the output target, not gradcheck, is at fault."""


class ReaderGone(Exception):
    """The process reading stdout (or stderr) closed its end of the pipe: `gradcheck ... | head`.

    Not an OSError on purpose: click turns an EPIPE OSError into exit 1, which means "findings" here.
    """


class _GuardedStdout:
    """A standard stream whose write errors are told apart from every other OSError."""

    def __init__(self, stream: Any, *, stdout: bool = True) -> None:
        self._stream = stream
        self._stdout = stdout

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise ReaderGone from None
        except OSError as error:
            if not self._stdout:
                raise
            raise StdoutError(error.errno, error.strerror or str(error)) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise ReaderGone from None
        except OSError as error:
            if not self._stdout:
                raise
            raise StdoutError(error.errno, error.strerror or str(error)) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def settle_streams() -> None:
    """Make stdout and stderr safe to print to, whatever the caller left us."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:  # the descriptor was closed: print nowhere rather than crash
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - lives until exit
        elif hasattr(stream, "reconfigure") and (stream.encoding or "").lower().replace("-", "") != "utf8":
            # cp1252, ascii, latin-1: print `\u2016` for what the encoding lacks instead of raising
            stream.reconfigure(errors="backslashreplace")
    if not isinstance(sys.stdout, _GuardedStdout):
        sys.stdout = _GuardedStdout(sys.stdout)  # type: ignore[assignment]
    if not isinstance(sys.stderr, _GuardedStdout):
        sys.stderr = _GuardedStdout(sys.stderr, stdout=False)  # type: ignore[assignment]


def _silence_stdout(name: str = "stdout") -> None:
    """After a failed write, let the interpreter's final flush go nowhere instead of failing again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, getattr(sys, name).fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - lives until exit


def debug_wanted(ctx: click.Context) -> bool:
    """--debug on the group, or GRADCHECK_DEBUG set to anything but empty or 0."""
    return bool(ctx.params.get("debug")) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def internal_error(error: BaseException, debug: bool) -> SystemExit:
    """Report a crash in one line (or with the traceback under --debug); the exit to raise."""
    if debug:
        import traceback  # only for --debug: every command line imports this module

        traceback.print_exception(error, file=sys.stderr)
    detail = str(error).splitlines()[0] if str(error).strip() else ""
    name = type(error).__name__ + (f": {detail}" if detail else "")
    hint = "" if debug else " (a bug; rerun as gradcheck --debug COMMAND ... for the traceback)"
    click.echo(f"gradcheck: internal error: {_escape(name)}{hint}", err=True)
    return SystemExit(EXIT_INTERNAL)


def stdout_failed(error: OSError) -> SystemExit:
    """One line for output that could not be written; exit 2 (a bad output target)."""
    _silence_stdout()
    click.echo(f"gradcheck: error: cannot write to standard output: {error.strerror or error}", err=True)
    return SystemExit(EXIT_INPUT)


def reader_gone() -> SystemExit:
    """Stop quietly: whoever read our output has what they wanted (exit 141, as git and coreutils)."""
    _silence_stdout("stdout")
    _silence_stdout("stderr")  # `2>&1 | head`: the same pipe; nothing more can be said anyway
    return SystemExit(EXIT_BROKEN_PIPE)


def _escape(text: str) -> str:
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class GuardedGroup(click.Group):
    """A click group whose commands exit 3 on a crash, 130 on Ctrl-C, 2 when stdout cannot be written.

    A closed pipe on stdout or stderr (`| head`) exits 141 without a word, also while --help is printed.
    """

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Settle the streams, then run the command line."""
        settle_streams()
        try:
            return super().main(*args, **kwargs)
        except ReaderGone:
            raise reader_gone() from None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Accept --debug after the command too (`gradcheck inspect RUN --debug`): it is the group's option."""
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[:end]:
            args = ["--debug", *(a for a in args[:end] if a != "--debug"), *args[end:]]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand, turning anything unexpected into exit 3 (never 1, never 0)."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except ReaderGone:
            raise reader_gone() from None
        except StdoutError as error:
            raise stdout_failed(error) from None
        except KeyboardInterrupt:
            click.echo("gradcheck: interrupted", err=True)
            raise SystemExit(EXIT_INTERRUPTED) from None
        except Exception as error:  # noqa: BLE001 - the one place a crash is turned into exit 3
            raise internal_error(error, debug_wanted(ctx)) from None
