"""`diplo proxy ca`: the root certificate of the proxy's internal CA, for clients that
should trust `tls: internal` sites (`curl --cacert`, a browser's or system's store)."""

from __future__ import annotations

import click

from diplo.cli.handled import handled


@click.group()
def proxy() -> None:
    """The host's reverse proxy (Caddy) that serves apps with domains."""


@proxy.command()
@click.pass_context
@handled
def ca(ctx: click.Context) -> None:
    """Print the PEM root certificate of the proxy's internal CA."""
    from diplo.errors import InputError
    from diplo.ops.context import Context

    context: Context = ctx.obj["context"]
    if not context.proxy_enabled:
        raise InputError("no proxy on this host", hint="an app with `domains:` brings it up")
    click.echo(context.proxy.root_ca().rstrip("\n"))
