"""`diplo serve`: its options, checked before anything starts; the server is built by
diplo/serve.py, the composition root of the controller and the API."""

from __future__ import annotations

from pathlib import Path

import click

from diplo.cli.handled import handled
from diplo.errors import InputError
from diplo.logconfig import configure


@click.command()
@click.option(
    "--manifests",
    "manifests",
    default=None,
    type=click.Path(file_okay=False, path_type=str),
    help="A folder of manifests to keep the host converged onto.",
)
@click.option("--repo", default=None, help="A git repository (path, file://, https://, ssh://).")
@click.option("--branch", default="main", show_default=True, help="The branch of --repo.")
@click.option("--path", "repo_path", default="", help="The manifests' folder in --repo.")
@click.option(
    "--interval",
    default="60s",
    show_default=True,
    help="How often --repo is polled (webhooks at POST /hooks/git come in between).",
)
@click.option(
    "--listen", default="127.0.0.1:7700", show_default=True, help="HOST:PORT of the REST API."
)
@click.option(
    "--resync",
    default="60s",
    show_default=True,
    help="Full resync period (also heals what events missed).",
)
@click.option(
    "--policy",
    "policy_file",
    default=None,
    type=click.Path(dir_okay=False, exists=True, path_type=str),
    help="What manifests may ask for (default: $DIPLO_HOME/policy.yaml, else strict "
    "defaults; see `diplo policy check --show`).",
)
@click.option(
    "--workers",
    default=4,
    show_default=True,
    type=click.IntRange(1, 32),
    help="Apps reconciled at once.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="A Host name the API answers to, besides the --listen host and localhost "
    "(repeatable; others get 421, against DNS rebinding).",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    metavar="IP",
    help="A reverse proxy whose X-Forwarded-For is believed (repeatable; default: none).",
)
@click.option("--tls-cert", default=None, metavar="FILE", help="Serve HTTPS: the certificate.")
@click.option("--tls-key", default=None, metavar="FILE", help="Serve HTTPS: its private key.")
@click.pass_context
@handled
def serve(
    ctx: click.Context,
    manifests: str | None,
    repo: str | None,
    branch: str,
    repo_path: str,
    interval: str,
    listen: str,
    resync: str,
    workers: int,
    allowed_hosts: tuple[str, ...],
    trusted_proxies: tuple[str, ...],
    tls_cert: str | None,
    tls_key: str | None,
    policy_file: str | None,
) -> None:
    """Run the controller: watch the folder and/or poll the repository, heal drift, serve
    the API. Stops cleanly on SIGTERM or Ctrl-C, leaving the apps running."""
    from diplo.controller.sources import FolderSource, GitSource, Source
    from diplo.paths import default_home
    from diplo.policy import load_policy
    from diplo.serve import Exposure, run_server
    from diplo.units import parse_duration

    if manifests is None and repo is None:
        raise click.UsageError("give --manifests DIR, --repo URL, or both")
    # A controller's log is its record: each deploy, heal, prune and rollback, at info.
    configure(ctx.obj["log_format"], "info")
    host, _, port_text = listen.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InputError(f"--listen {listen!r}: use HOST:PORT, e.g. 127.0.0.1:7700")
    periods = {}
    for name, text in (("--resync", resync), ("--interval", interval)):
        try:
            periods[name] = parse_duration(text)
        except ValueError as exc:
            raise InputError(f"{name}: {exc}") from exc
    if ".." in Path(repo_path).parts or Path(repo_path).is_absolute():
        raise InputError(f"--path {repo_path!r}: give a folder inside the repository")
    exposure = Exposure(
        allowed_hosts=[_host_name(h) for h in allowed_hosts],
        trusted_proxies=[_proxy(ip) for ip in trusted_proxies],
        tls=_tls(tls_cert, tls_key),
    )
    policy = load_policy(policy_file)  # a broken policy stops serve before it starts
    sources: list[Source] = []
    if manifests is not None:
        sources.append(FolderSource(Path(manifests), policy))
    if repo is not None:
        sources.append(GitSource(repo, branch, repo_path, default_home(), policy))
    run_server(
        ctx.obj["context"],
        sources,
        host.strip("[]"),
        int(port_text),
        resync=periods["--resync"],
        workers=workers,
        poll_every=periods["--interval"],
        exposure=exposure,
        log_format=ctx.obj["log_format"],
    )


def _host_name(name: str) -> str:
    if not name or any(c in name for c in "/ @?#") or name.count(":") == 1:
        raise InputError(
            f"--allowed-host {name!r}: give a host name or address, without scheme or port"
        )
    return name


def _proxy(ip: str) -> str:
    import ipaddress

    try:
        ipaddress.ip_network(ip, strict=False)
    except ValueError as exc:
        raise InputError(f"--trusted-proxy {ip!r}: give an IP address or network") from exc
    return ip


def _tls(cert: str | None, key: str | None) -> tuple[Path, Path] | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise InputError("give both --tls-cert FILE and --tls-key FILE, or neither")
    for option, name in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(name).is_file():
            raise InputError(f"{option} {name}: no such file")
    return Path(cert).resolve(), Path(key).resolve()
