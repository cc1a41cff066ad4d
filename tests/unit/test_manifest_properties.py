"""Property: any text given to the manifest loader gives a DesiredState or a DiploError,
never another exception, within a time and memory bound (M1). The generated documents
mix anchors and aliases (undefined and recursive ones too), deep nesting, merge keys and
interpolations into the manifest's own keys."""

from __future__ import annotations

import shutil
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diplo.errors import DiploError
from diplo.manifest.load import load_manifests
from diplo.model import DesiredState

ENV = {"A": "1", "B": "busybox", "C": "8080:80", "D": "${A}"}
KEYS = [
    "apps", "web", "db", "project", "image", "build", "context", "ports", "volumes", "env",
    "env_file", "health", "http", "port", "interval", "timeout", "deploy", "command",
    "depends_on", "labels", "restart", "stop_grace_period", "<<", "x-a",
]  # fmt: skip
SCALARS = [
    "busybox", "1", "8080", "18080:80", "./", "/", "..", "/etc", "10s", "0s", "10000h", "true",
    "null", "~", "''", "'a b'", "${A}", "${A:-${B:-x}}", "${NOPE}", "$$", "${", "${A:?}",
    "${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-x}}}}}}}}}}}}}}}}}",
    "/var/run/docker.sock:/s", "data:/data", "'${C}'", "web",
]  # fmt: skip


def _node(depth: int) -> st.SearchStrategy[str]:
    anchor = st.sampled_from(["", "&a ", "&b ", "&c "])
    alias = st.sampled_from(["*a", "*b", "*c"])
    scalar = st.one_of(st.sampled_from(SCALARS), alias)
    if depth <= 0:
        return scalar
    child = _node(depth - 1)
    seq = st.builds(
        lambda a, xs: a + "[" + ", ".join(xs) + "]", anchor, st.lists(child, max_size=4)
    )
    pairs = st.lists(st.tuples(st.sampled_from(KEYS), child), max_size=4)
    mapping = st.builds(
        lambda a, kv: a + "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}", anchor, pairs
    )
    return st.one_of(scalar, seq, mapping)


documents = st.one_of(
    st.builds(lambda n: f"apps: {n}\n", _node(4)),
    st.builds(lambda n, m: f"x-a: {n}\napps:\n  web: {m}\n", _node(3), _node(4)),
    st.builds(lambda t: f"apps:\n  web:\n    image: busybox\n{t}", st.text(max_size=200)),
    st.text(max_size=300),
)


@settings(
    max_examples=150,
    deadline=2000,  # ms per example: no input makes the loader slow
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(text=documents)
def test_any_text_gives_a_desired_state_or_a_diplo_error(text: str, tmp_path_factory) -> None:
    folder = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    try:
        (folder / "diplo.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        tracemalloc.start()
        try:
            result = load_manifests([str(folder)], environ=ENV)
            assert isinstance(result, DesiredState)
        except DiploError:
            pass
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert peak < 64 << 20, f"{peak} bytes for {len(text)} bytes of manifest"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("levels", [6, 9])
def test_the_worst_alias_fan_out_is_refused_within_the_bounds(levels: int, tmp_path: Path):
    lines = ["x-0: &n0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"x-{i}: &n{i} [" + ", ".join([f"*n{i - 1}"] * 10) + "]" for i in range(1, levels)]
    (tmp_path / "diplo.yaml").write_text("\n".join(lines) + "\napps: {}\n")
    tracemalloc.start()
    try:
        with pytest.raises(DiploError, match="aliases"):
            load_manifests([str(tmp_path)], environ={})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
