"""The ``bertcls`` console script."""

from __future__ import annotations

import os
import signal
import sys

import typer

from bertcls.runtime.errors import BertclsError, ConfigError, FileSystemError
from bertcls.runtime.interrupts import Interrupted, raise_on_signals

app = typer.Typer(
    name="bertcls",
    help="Turn a CSV of labelled texts into a tuned, evaluated BERT-style text classifier.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _register() -> None:
    from bertcls.cli import (
        config_cmd,
        evaluate_cmd,
        explain_cmd,
        export_cmd,
        inspect_cmd,
        optimize_cmd,
        predict_cmd,
        serve_cmd,
        suggest_cmd,
        train_cmd,
    )

    app.command("train")(train_cmd.train)
    app.command("predict")(predict_cmd.predict)
    app.command("inspect")(inspect_cmd.inspect)
    app.command("evaluate")(evaluate_cmd.evaluate)
    app.command("optimize")(optimize_cmd.optimize)
    app.command("export")(export_cmd.export)
    app.command("serve")(serve_cmd.serve)
    app.command("explain")(explain_cmd.explain)
    app.command("suggest")(suggest_cmd.suggest)
    app.add_typer(config_cmd.config_app, name="config")


_register()


def report_error(exc: BertclsError) -> None:
    from rich.markup import escape

    from bertcls.cli.common import err_console
    from bertcls.runtime.redaction import redact

    err_console.print(f"[bold red]Error:[/] {escape(redact(str(exc)))}", highlight=False, soft_wrap=True)
    if isinstance(exc, ConfigError):
        for problem in exc.problems:
            err_console.print(f"  - {escape(redact(str(problem)))}", highlight=False, soft_wrap=True)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code: user errors print one sentence and give 2, never a traceback; Ctrl-C
    and SIGTERM print one sentence and give 130 and 143."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    previous = raise_on_signals()
    finished = False
    try:
        result = app(args=argv, standalone_mode=False)
        finished = True
    except BertclsError as exc:
        report_error(exc)
        return 2
    except Interrupted as exc:
        sys.stderr.write(exc.message + "\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted by Ctrl-C (SIGINT).\n")
        return 130
    except BrokenPipeError:  # the reader of standard output went away (predict -o - | head): not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so that the interpreter's final flush stays quiet
        return 0
    except OSError as exc:  # a full disk, a read-only folder, a file where a folder should be
        if isinstance(exc, (ConnectionError, TimeoutError)):
            report_error(BertclsError(f"A connection failed ({exc.strerror or exc})."))
        else:
            report_error(FileSystemError.from_os_error(exc))
        return 2
    except Exception as exc:
        # Typer vendors its own click: match its usage errors, Exit and Abort by shape, not by class.
        if type(exc).__name__ == "Abort":
            sys.stderr.write("Interrupted.\n")
            return 130
        exit_code = getattr(exc, "exit_code", None)
        if exit_code is None:
            raise
        if hasattr(exc, "format_message"):
            command = getattr(getattr(exc, "ctx", None), "command_path", "bertcls")
            from bertcls.runtime.redaction import redact

            sys.stderr.write(f"Error: {redact(exc.format_message())} (see {command} --help)\n")
        return exit_code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        leave_process_group(together=finished)
    return result if isinstance(result, int) else 0


def leave_process_group(*, together: bool) -> None:
    """Under torchrun, destroy the process group before the interpreter exits: left to finalisation, gloo's worker
    threads can abort the process ("terminate called without an active exception", SIGABRT) after a good run.
    After a good run the ranks leave together (a rank that finished early, as in frozen training, waits for the
    others) so that no rank tears its connections down under a peer still using them."""
    # never imported (and torch never loaded) on plain runs
    distributed = sys.modules.get("bertcls.runtime.distributed")
    if distributed is not None:
        distributed.shutdown(together=together)


def main() -> None:
    sys.exit(run())
