"""Every command's error handling: a message and an exit code, never a bare traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

import click

from diplo.errors import DiploError
from diplo.hostkey import host_key
from diplo.model import use_digest_key
from diplo.ops.context import Context
from diplo.paths import default_home

P = ParamSpec("P")
R = TypeVar("R")


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handled(fn: Callable[P, R]) -> Callable[P, R]:
    """Diplo errors become a message and an exit code; anything else a short report
    (set DIPLO_DEBUG=1 for the traceback). Never a bare traceback. The adapters are
    built here (or given by a test as `obj["context"]`) and closed after the command."""

    @wraps(fn)
    def inner(*args: P.args, **kwargs: P.kwargs) -> R:
        click_ctx = click.get_current_context()
        click_ctx.ensure_object(dict)
        ctx = click_ctx.obj.setdefault("context", Context())
        try:
            use_digest_key(lambda: host_key(default_home()))  # digests agree with serve's
            return fn(*args, **kwargs)
        except DiploError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except click.ClickException:
            raise  # usage errors: click prints them and exits 2
        except Exception as exc:
            if os.environ.get("DIPLO_DEBUG"):
                raise
            _fail(
                f"internal error: {type(exc).__name__}: {exc} "
                "(set DIPLO_DEBUG=1 for the traceback, and please report it)",
                1,
            )
        finally:
            ctx.close()
        raise AssertionError("unreachable")

    return inner
