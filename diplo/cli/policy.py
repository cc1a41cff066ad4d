"""`diplo policy check`: what the host's policy would refuse in a manifest, before it is
pushed or saved; `--show` prints the policy in force."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from diplo.errors import InputError, ManifestError

if TYPE_CHECKING:
    from diplo.policy import SourceKind

# diplo.policy's KINDS, written out so that `diplo --help` need not import the policy
# model (pydantic); a test keeps the two equal.
KINDS = ("repository", "folder", "apply")


@click.group()
def policy() -> None:
    """The host owner's policy: what a manifest may ask for, per kind of source."""


def _root(kind: SourceKind, paths: list[str], given: str | None) -> Path | None:
    """The source's root: what serve would confine it to."""
    if given is not None:
        return Path(given)
    if kind == "apply":
        return None
    first = Path(paths[0])
    folder = first if first.is_dir() else first.parent
    if kind == "repository":
        top = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=False,
        )
        if top.returncode == 0 and top.stdout.strip():
            return Path(top.stdout.strip())
    return folder


@policy.command()
@click.option("-f", "--file", "files", multiple=True, help="Manifest file or folder.")
@click.option(
    "--as",
    "kind",
    type=click.Choice(KINDS),
    default="repository",
    show_default=True,
    help="Judge the manifests as this kind of source.",
)
@click.option(
    "--policy",
    "policy_file",
    default=None,
    type=click.Path(dir_okay=False, exists=True),
    help="Policy file (default: $DIPLO_HOME/policy.yaml, else the defaults).",
)
@click.option(
    "--root",
    default=None,
    type=click.Path(file_okay=False, exists=True),
    help="The source's root (default: the repository's top, or the manifests' folder).",
)
@click.option("--show", is_flag=True, help="Print the policy in force, too.")
def check(
    files: tuple[str, ...], kind: SourceKind, policy_file: str | None, root: str | None, show: bool
) -> None:
    """Print what the policy would refuse in the manifests (exit 0: nothing, 2: something)."""
    import yaml

    from diplo.manifest.load import load_manifests
    from diplo.policy import load_policy

    paths = list(files) or ["diplo.yaml"]
    try:
        policy = load_policy(policy_file)
        if show:
            click.echo(yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False))
        load_manifests(paths, policy=policy, kind=kind, root=_root(kind, paths, root))
    except ManifestError as exc:
        click.echo(f"would be refused as a {kind} source:", err=True)
        for issue in exc.issues:
            click.echo(f"  {issue}", err=True)
        sys.exit(2)
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    click.echo(f"nothing would be refused as a {kind} source")
