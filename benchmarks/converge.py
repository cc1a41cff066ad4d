"""Converge benchmark: `diplo apply` against a Docker SDK baseline and docker-compose v1.

For each N it times, as wall-clock of a fresh subprocess (so interpreter start-up and
imports count on every side):
  * diplo cold   `python -m diplo.cli apply -f FILE --parallel 8` with an empty DIPLO_HOME;
  * baseline     the same N containers (image, command, init, published port, labels,
                 restart policy, a user-defined bridge network) made with the low-level
                 Docker SDK and a ThreadPoolExecutor(8), in a fresh `python -c` process;
  * compose      `docker-compose up -d` (Debian's v1) of an equivalent compose file.
At N=100 it also times a no-op apply and a one-app env change against the cold state.

Everything it creates carries the label `diplo-bench=1` (diplo's network: its
`diplo.project` label) and is removed after every step and on exit, Ctrl-C included.

    .venv/bin/python benchmarks/converge.py [--sizes 10,50,100] [--repeat K]
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import docker

IMAGE = "busybox:latest"
COMMAND = ["httpd", "-f", "-p", "8080", "-h", "/tmp"]
PARALLEL = 8
BENCH_LABEL = "diplo-bench"
RUN_LABEL = "diplo-bench-run"
COMPOSE = Path("/usr/bin/docker-compose")
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "converge.json"
STEP_TIMEOUT = 300.0  # seconds, per timed subprocess
ATTEMPTS = 3  # a step whose result fails verification (disturbed) is retried
TARGET_N = 100
COLD_RATIO_TARGET = 1.2
NOOP_TARGET_S = 1.0
CHANGE_TARGET_S = 2.0


class Disturbed(Exception):
    """A step ran, but the engine state afterwards is not what it should have made."""


# --- the baseline, run in a fresh interpreter ---------------------------------------------


def baseline_worker(spec_json: str) -> None:
    """Create the network and N containers the way a hand-written SDK script would.
    Self-contained: its source is run with `python -c`, so that the timed process
    imports only what such a script would (json, concurrent.futures, docker)."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    import docker

    spec = json.loads(spec_json)
    api = docker.APIClient(version="auto", timeout=120)
    network: str = spec["network"]
    labels: dict[str, str] = spec["labels"]
    api.create_network(network, driver="bridge", labels=labels, check_duplicate=True)

    def run(app: str) -> None:
        host_config = api.create_host_config(
            port_bindings={"8080/tcp": None},  # the engine picks the host port
            init=True,
            restart_policy={"Name": "unless-stopped"},
            network_mode=network,
        )
        networking = api.create_networking_config(
            {network: api.create_endpoint_config(aliases=[app])}
        )
        created = api.create_container(
            spec["image"],
            name=f"{spec['project']}-{app}-1",
            command=spec["command"],
            labels={**labels, "bench.app": app, "bench.project": spec["project"]},
            ports=[8080],
            host_config=host_config,
            networking_config=networking,
            detach=True,
        )
        api.start(created["Id"])

    with ThreadPoolExecutor(spec["parallel"]) as pool:
        list(pool.map(run, spec["apps"]))


def baseline_code() -> str:
    """`python -c` source that runs baseline_worker(sys.argv[1])."""
    source = textwrap.dedent(inspect.getsource(baseline_worker))
    return f"import sys\n{source}\nbaseline_worker(sys.argv[1])\n"


# --- engine helpers -----------------------------------------------------------------------


def engine() -> docker.APIClient:
    import docker

    return docker.APIClient(version="auto", timeout=120)


def running_ids(api: docker.APIClient, run_id: str) -> dict[str, str]:
    """Running containers of this run: name -> id."""
    filters = {"label": f"{RUN_LABEL}={run_id}", "status": "running"}
    return {c["Names"][0]: c["Id"] for c in api.containers(filters=filters)}


def foreign_count(api: docker.APIClient) -> int:
    """Containers that are not ours: a hint that someone else loads the engine."""
    return sum(1 for c in api.containers(all=True) if BENCH_LABEL not in (c.get("Labels") or {}))


def sweep(api: docker.APIClient, diplo_projects: set[str], settle: float = 0.5) -> None:
    """Remove every benchmark container and network; return once two checks in a row,
    `settle` seconds apart, find nothing (in-flight creates of a killed client land late)."""
    import docker.errors

    deadline = time.monotonic() + 180
    clean_checks = 0
    while clean_checks < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("benchmark containers/networks still present after 180 s")
        containers = api.containers(all=True, filters={"label": f"{BENCH_LABEL}=1"})
        nets = api.networks(filters={"label": f"{BENCH_LABEL}=1"})
        for project in diplo_projects:
            nets += api.networks(filters={"label": f"diplo.project={project}"})

        def rm_container(cid: str) -> None:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                api.remove_container(cid, force=True)

        with ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(rm_container, [c["Id"] for c in containers]))
        for net in nets:  # after the containers, or the engine refuses
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                api.remove_network(net["Id"])
        clean_checks = clean_checks + 1 if not containers and not nets else 0
        if clean_checks < 2:
            time.sleep(settle)


# --- timed steps --------------------------------------------------------------------------


@dataclass
class Bench:
    api: docker.APIClient
    run_id: str
    tmp: Path
    diplo_args: list[str] = field(default_factory=list)  # extra `diplo apply` arguments
    diplo_projects: set[str] = field(default_factory=set)
    disturbed: list[str] = field(default_factory=list)  # what had to be retried, and why
    foreign: list[int] = field(default_factory=list)  # foreign containers seen per step
    failed: list[str] = field(default_factory=list)  # optional steps that gave no number

    @property
    def labels(self) -> dict[str, str]:
        return {BENCH_LABEL: "1", RUN_LABEL: self.run_id}

    def apps(self, n: int) -> list[str]:
        return [f"b{self.run_id}-{i:03d}" for i in range(1, n + 1)]

    def timed(self, argv: list[str], *, env: dict[str, str] | None = None) -> tuple[float, str]:
        """Wall time of a subprocess, and its stdout; a failure raises Disturbed."""
        self.foreign.append(foreign_count(self.api))
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                argv, cwd=self.tmp, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT
            )
        except subprocess.TimeoutExpired as exc:
            raise Disturbed(f"{argv[2:5]} hung for {STEP_TIMEOUT:g} s (killed)") from exc
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise Disturbed(f"{argv[2:5]} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
        return elapsed, proc.stdout

    def expect_running(self, n: int, what: str) -> dict[str, str]:
        got = running_ids(self.api, self.run_id)
        if len(got) != n:
            raise Disturbed(f"{what}: {len(got)} of {n} containers running afterwards")
        return got

    def clean(self) -> None:
        sweep(self.api, self.diplo_projects)

    def retrying(
        self, what: str, step: Callable[[], dict[str, float]], *, required: bool = True
    ) -> dict[str, float]:
        """Run a step (which cleans up after itself); retry it when disturbed. An optional
        step that never succeeds gives no numbers instead of ending the run."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return step()
            except Disturbed as exc:
                self.disturbed.append(f"{what} attempt {attempt}: {exc}")
                print(f"  disturbed, retrying: {exc}", file=sys.stderr)
                self.clean()
        if not required:
            self.failed.append(what)
            return {}
        raise RuntimeError(f"{what}: disturbed {ATTEMPTS} times; see the messages above")

    # diplo ----------------------------------------------------------------------------

    def diplo_manifest(self, path: Path, project: str, n: int, changed: str = "") -> None:
        import yaml

        apps: dict[str, Any] = {}
        for app in self.apps(n):
            spec: dict[str, Any] = {
                "image": IMAGE,
                "command": COMMAND,
                "init": True,
                "ports": ["8080"],
                "labels": self.labels,
                # A real deploy is health-gated: diplo waits for httpd to accept.
                "health": {"tcp": {"port": 8080}},
            }
            if app == changed:
                spec["env"] = {"BENCH_CHANGE": "1"}
            apps[app] = spec
        path.write_text(yaml.safe_dump({"project": project, "apps": apps}, sort_keys=False))

    def diplo(self, n: int, rep: int, follow_ups: bool) -> dict[str, float]:
        project = f"bench-{self.run_id}-n{n}-r{rep}"
        self.diplo_projects.add(project)
        home = self.tmp / f"home-{project}"  # a fresh ledger
        manifest = self.tmp / f"{project}.yaml"
        self.diplo_manifest(manifest, project, n)
        env = {**os.environ, "DIPLO_HOME": str(home), "NO_COLOR": "1"}
        env.pop("DIPLO_DEBUG", None)
        argv = [sys.executable, "-m", "diplo.cli", "apply", "-f", str(manifest)]
        argv += ["--parallel", str(PARALLEL), *self.diplo_args]
        out: dict[str, float] = {}
        try:
            out["cold"], _ = self.timed(argv, env=env)
            before = self.expect_running(n, "diplo cold")
            if follow_ups:
                # Checked on the engine, not on diplo's wording: same containers after the
                # no-op; exactly one replaced after the one-app change.
                out["noop"], _ = self.timed(argv, env=env)
                if self.expect_running(n, "diplo no-op") != before:
                    raise Disturbed("the no-op apply replaced containers")
                self.diplo_manifest(manifest, project, n, changed=self.apps(n)[n // 2])
                out["change"], _ = self.timed(argv, env=env)
                after = self.expect_running(n, "diplo one-app change")
                replaced = [name for name, cid in after.items() if before.get(name) != cid]
                if len(replaced) != 1:
                    raise Disturbed(f"the one-app change replaced {len(replaced)} containers")
        finally:
            self.clean()
            shutil.rmtree(home, ignore_errors=True)
        return out

    # baseline ---------------------------------------------------------------------------

    def baseline(self, n: int, rep: int) -> dict[str, float]:
        project = f"bsdk-{self.run_id}-n{n}-r{rep}"
        spec = {
            "project": project,
            "network": f"{project}-net",
            "labels": self.labels,
            "apps": self.apps(n),
            "image": IMAGE,
            "command": COMMAND,
            "parallel": PARALLEL,
        }
        try:
            elapsed, _ = self.timed([sys.executable, "-c", baseline_code(), json.dumps(spec)])
            self.expect_running(n, "SDK baseline")
        finally:
            self.clean()
        return {"baseline": elapsed}

    # compose ----------------------------------------------------------------------------

    def compose(self, n: int, rep: int) -> dict[str, float]:
        import yaml

        project = f"bcmp{self.run_id}n{n}r{rep}"
        services = {
            app: {
                "image": IMAGE,
                "command": COMMAND,
                "init": True,
                "ports": ["8080"],
                "restart": "unless-stopped",
                "labels": self.labels,
            }
            for app in self.apps(n)
        }
        doc = {
            "version": "2.4",  # v1's file format that has `init`
            "services": services,
            "networks": {"default": {"labels": self.labels}},
        }
        path = self.tmp / f"{project}.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        base = [str(COMPOSE), "-p", project, "-f", str(path)]
        # Compose v1 deadlocks when the limit is below ~2x the services (nested pools,
        # docker/compose#5864, #8226), so it cannot be held to 8: it runs unlimited.
        env = {**os.environ, "COMPOSE_PARALLEL_LIMIT": str(2 * n + 8)}
        try:
            elapsed, _ = self.timed([*base, "up", "-d"], env=env)
            self.expect_running(n, "compose")
        finally:
            subprocess.run(
                [*base, "down", "-t", "1", "--remove-orphans"],
                cwd=self.tmp,
                env=env,
                capture_output=True,
                timeout=STEP_TIMEOUT,
                check=False,
            )
            self.clean()
        return {"compose": elapsed}


# --- reporting ----------------------------------------------------------------------------


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt(x: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if x is None else f"{x:.{digits}f}{suffix}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def report(rows: dict[int, dict[str, list[float]]], meta: dict[str, Any]) -> dict[str, Any]:
    """Print the Markdown table and targets; return the JSON document."""
    table = [
        "| N | diplo cold (s) | SDK baseline (s) | diplo/baseline "
        "| compose (s) | compose/baseline |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    sizes: list[dict[str, Any]] = []
    for n, samples in rows.items():
        cold, base, comp = (median(samples[k]) for k in ("cold", "baseline", "compose"))
        table.append(
            f"| {n} | {fmt(cold)} | {fmt(base)} | {fmt(ratio(cold, base), 2, 'x')} "
            f"| {fmt(comp)} | {fmt(ratio(comp, base), 2, 'x')} |"
        )
        sizes.append(
            {
                "n": n,
                "samples": samples,
                "median": {"diplo_cold": cold, "baseline": base, "compose": comp},
                "diplo_over_baseline": ratio(cold, base),
                "compose_over_baseline": ratio(comp, base),
            }
        )
    at = rows.get(TARGET_N, {})
    cold_ratio = ratio(median(at.get("cold", [])), median(at.get("baseline", [])))
    noop, change = median(at.get("noop", [])), median(at.get("change", []))
    targets = {
        "cold_100_within_1.2x_baseline": {
            "value": cold_ratio,
            "target": COLD_RATIO_TARGET,
            "pass": None if cold_ratio is None else cold_ratio <= COLD_RATIO_TARGET,
        },
        "noop_100_under_1s": {
            "value": noop,
            "target": NOOP_TARGET_S,
            "pass": None if noop is None else noop < NOOP_TARGET_S,
        },
        "one_change_100_under_2s": {
            "value": change,
            "target": CHANGE_TARGET_S,
            "pass": None if change is None else change < CHANGE_TARGET_S,
        },
    }
    t = targets
    lines = [
        "",
        *table,
        "",
        f"- no-op `diplo apply`, N={TARGET_N}: {fmt(noop, suffix=' s')} "
        f"(target < {NOOP_TARGET_S:g} s) {verdict(t['noop_100_under_1s']['pass'])}",
        f"- one-app change `diplo apply`, N={TARGET_N}: {fmt(change, suffix=' s')} "
        f"(target < {CHANGE_TARGET_S:g} s) {verdict(t['one_change_100_under_2s']['pass'])}",
        f"- cold apply, N={TARGET_N}: {fmt(cold_ratio, 2, 'x')} the SDK baseline "
        f"(target <= {COLD_RATIO_TARGET:g}x) "
        f"{verdict(t['cold_100_within_1.2x_baseline']['pass'])}",
        "",
        f"Wall-clock seconds, median of {meta['repeat']} run(s); every column is a fresh "
        "process (Python start-up and imports included on all sides); parallelism "
        f"{PARALLEL} for diplo and the baseline; compose v1 runs unlimited "
        "(COMPOSE_PARALLEL_LIMIT=2N+8: lower limits deadlock it, docker/compose#5864).",
        f"Engine {meta['engine']}, {meta['cpus']} CPUs, Python {meta['python']}.",
    ]
    if meta["diplo_args"]:
        lines.append(f"diplo apply ran with extra arguments: {' '.join(meta['diplo_args'])}.")
    if meta["failed"]:
        lines.append(f"No number (failed {ATTEMPTS} times): {', '.join(meta['failed'])}.")
    if meta["disturbed"]:
        lines.append(f"Retried after disturbance: {len(meta['disturbed'])} step(s) (see JSON).")
    if meta["foreign_max"]:
        lines.append(
            f"Note: up to {meta['foreign_max']} foreign container(s) were on the engine "
            "during the steps; the numbers may be noisy."
        )
    print("\n".join(lines))
    return {**meta, "sizes": sizes, "targets": targets}


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,50,100", help="comma-separated N (10,50,100)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (median)")
    parser.add_argument("--no-compose", action="store_true", help="skip the compose column")
    parser.add_argument(
        "--diplo-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every `diplo apply` (repeatable), e.g. --diplo-arg=--no-wait",
    )
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes takes integers, e.g. 10,50,100")
    if not args.sizes or min(args.sizes) < 1 or max(args.sizes) > 999 or args.repeat < 1:
        parser.error("sizes must be 1..999 and --repeat at least 1")
    return args


@contextlib.contextmanager
def cleanup_guard(bench: Bench) -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C; the final sweep is not interrupted by a second one."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("cleaning up ...", file=sys.stderr)
        try:
            bench.clean()
        finally:
            shutil.rmtree(bench.tmp, ignore_errors=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)


def warm_up(bench: Bench) -> None:
    """Untimed: fill the page cache and __pycache__ for both interpreters."""
    subprocess.run([sys.executable, "-m", "diplo.cli", "--version"], capture_output=True)
    subprocess.run([sys.executable, "-c", "import docker, yaml"], capture_output=True)
    with contextlib.suppress(Disturbed):
        bench.baseline(2, 0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    api = engine()
    api.inspect_image(IMAGE)  # fail early: never pull
    compose = COMPOSE.exists() and not args.no_compose
    tmp = Path(tempfile.mkdtemp(prefix="diplo-bench-"))
    bench = Bench(api, uuid.uuid4().hex[:6], tmp, diplo_args=args.diplo_arg)
    rows: dict[int, dict[str, list[float]]] = {}
    with cleanup_guard(bench):
        bench.clean()  # leftovers of an earlier, killed run
        warm_up(bench)
        for n in args.sizes:
            rows[n] = {k: [] for k in ("cold", "noop", "change", "baseline", "compose")}
            for rep in range(1, args.repeat + 1):
                steps: list[tuple[str, Callable[[], dict[str, float]]]] = [
                    ("diplo", lambda n=n, r=rep: bench.diplo(n, r, n == TARGET_N)),
                    ("baseline", lambda n=n, r=rep: bench.baseline(n, r)),
                ]
                if compose:
                    steps.append(("compose", lambda n=n, r=rep: bench.compose(n, r)))
                for what, step in steps:
                    result = bench.retrying(f"N={n} {what}", step, required=what != "compose")
                    for key, value in result.items():
                        rows[n][key].append(value)
                    shown = ", ".join(f"{k} {v:.2f} s" for k, v in result.items()) or "failed"
                    print(f"N={n} run {rep}: {what}: {shown}", file=sys.stderr)
    meta = {
        "run_id": bench.run_id,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "engine": api.version().get("Version", "?"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "repeat": args.repeat,
        "parallel": PARALLEL,
        "diplo_args": args.diplo_arg,
        "compose": str(COMPOSE) if compose else None,
        "disturbed": bench.disturbed,
        "failed": bench.failed,
        "foreign_max": max(bench.foreign, default=0),
    }
    doc = report(rows, meta)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nresults: {RESULTS}")
    left = subprocess.run(
        ["docker", "ps", "-a", "-q", "--filter", f"label={BENCH_LABEL}=1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    print(f"docker ps -a: {len(left)} benchmark container(s) left" + (f": {left}" if left else ""))
    return 1 if left else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # cleaned up already, in cleanup_guard
        print("interrupted", file=sys.stderr)
        sys.exit(130)
