"""Where `diplo serve` reads its desired state: a folder, or a path of a real git
repository made in tmp_path (no network), and several sources merged."""

from __future__ import annotations

from pathlib import Path

import pytest

from diplo.controller.sources import FolderSource, GitSource, Loaded, merge
from diplo.errors import DiploError, InputError, ManifestError
from diplo.model import DesiredState, Revision
from diplo.policy import parse_policy

from .gitrepo import commit, git

WEB = "project: shop\napps:\n  web:\n    image: busybox:latest\n"
INVALID = "project: shop\napps:\n  web:\n    image: busybox:latest\n    bogus: 1\n"


def source(upstream: Path, home: Path, path: str = "deploy") -> GitSource:
    return GitSource(str(upstream), "main", path, home)


# --- a folder ------------------------------------------------------------------------


def test_folder_source_loads_and_describes_its_folder(tmp_path: Path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "diplo.yaml").write_text(WEB)
    src = FolderSource(tmp_path / "m" / ".." / "m")
    assert src.describe() == {"kind": "folder", "path": str(folder)}
    assert src.name == f"folder:{folder}"
    loaded = src.load()
    assert [a.name for a in loaded.desired.apps] == ["web"]
    assert loaded.revision.source == src.name and loaded.of("web") == loaded.revision


def test_an_empty_folder_desires_nothing(tmp_path: Path):
    (tmp_path / "m").mkdir()
    loaded = FolderSource(tmp_path / "m").load()
    assert loaded.desired == DesiredState()


def test_a_missing_folder_is_an_error(tmp_path: Path):
    with pytest.raises(InputError, match="no such file or folder"):
        FolderSource(tmp_path / "gone").load()


def test_an_invalid_manifest_in_a_folder(tmp_path: Path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "diplo.yaml").write_text(INVALID)
    with pytest.raises(ManifestError, match="unknown key 'bogus'"):
        FolderSource(tmp_path / "m").load()


# --- a repository --------------------------------------------------------------------


def test_git_source_loads_the_branch_head(upstream: Path, tmp_path: Path):
    sha = commit(upstream, {"deploy/diplo.yaml": WEB, "README": "hi"}, "Add web\n\nbody")
    src = source(upstream, tmp_path / "home")
    assert src.describe()["head"] is None and src.describe()["applied"] is None
    loaded = src.load()
    assert [a.name for a in loaded.desired.apps] == ["web"]
    rev = loaded.revision
    assert (rev.source, rev.commit, rev.subject) == (str(upstream), sha, "Add web")
    assert rev.author == "Ann Dev <ann@example.test>"
    info = src.describe()
    assert info["kind"] == "git" and info["branch"] == "main" and info["path"] == "deploy"
    assert info["head"]["sha"] == sha and info["applied"]["sha"] == sha  # type: ignore[index]
    assert info["refused"] is None and info["poll_error"] is None
    assert info["last_poll_ok"] is not None
    assert (src.tree / "deploy" / "diplo.yaml").read_text() == WEB


def test_the_same_head_again_is_the_cached_state(upstream: Path, tmp_path: Path):
    commit(upstream, {"deploy/diplo.yaml": WEB}, "Add web")
    src = source(upstream, tmp_path / "home")
    first = src.load()
    again = src.load()
    assert again.desired is first.desired  # not read again
    assert again.revision == first.revision


def test_a_new_commit_is_loaded(upstream: Path, tmp_path: Path):
    commit(upstream, {"deploy/diplo.yaml": WEB}, "Add web")
    src = source(upstream, tmp_path / "home")
    src.load()
    api = WEB + "  api:\n    image: busybox:latest\n"
    sha = commit(upstream, {"deploy/diplo.yaml": api}, "Add api")
    loaded = src.load()
    assert sorted(a.name for a in loaded.desired.apps) == ["api", "web"]
    assert loaded.revision.commit == sha
    assert (src.tree / "deploy" / "diplo.yaml").read_text() == api


def test_the_whole_repository_as_the_path(upstream: Path, tmp_path: Path):
    commit(upstream, {"diplo.yaml": WEB}, "Add web")
    src = source(upstream, tmp_path / "home", path="/")
    assert src.describe()["path"] == "."
    assert [a.name for a in src.load().desired.apps] == ["web"]


def test_an_invalid_commit_is_refused_and_the_last_good_tree_stays(upstream: Path, tmp_path: Path):
    good = commit(upstream, {"deploy/diplo.yaml": WEB}, "Add web")
    src = source(upstream, tmp_path / "home")
    src.load()
    bad = commit(upstream, {"deploy/diplo.yaml": INVALID}, "Break it")
    with pytest.raises(ManifestError) as exc:
        src.load()
    (issue,) = exc.value.issues
    assert issue.file == f"{bad[:10]}:deploy/diplo.yaml"
    assert f"{bad[:10]}:deploy/diplo.yaml:5:5: unknown key 'bogus'" in exc.value.message
    info = src.describe()
    assert info["head"]["sha"] == bad  # type: ignore[index]
    assert info["applied"]["sha"] == good  # type: ignore[index]
    refused = info["refused"]
    assert refused["sha"] == bad and refused["subject"] == "Break it"  # type: ignore[index]
    assert refused["error"].startswith(f"commit {bad[:10]} (Break it) refused:")  # type: ignore[index]
    assert (src.tree / "deploy" / "diplo.yaml").read_text() == WEB  # the good tree stays
    assert not (src.cache / "staging").exists()
    # Polled again, the refused head is refused again with the same issues.
    with pytest.raises(ManifestError) as again:
        src.load()
    assert again.value.issues == exc.value.issues
    # A fix is loaded and clears the refusal.
    fixed = commit(upstream, {"deploy/diplo.yaml": WEB}, "Fix it")
    assert src.load().revision.commit == fixed
    assert src.describe()["refused"] is None


def test_a_checkout_over_the_policy_limits_is_refused_before_it_fills_the_disk(
    upstream: Path, tmp_path: Path
):
    good = commit(upstream, {"deploy/diplo.yaml": WEB}, "Add web")
    policy = parse_policy("repository:\n  limits:\n    checkout_bytes: 100000\n")
    src = GitSource(str(upstream), "main", "deploy", tmp_path / "home", policy)
    src.load()
    # 10 MB of zeros: a few kB in the pack, 10 MB on disk once written out.
    bomb = commit(upstream, {"deploy/zeros.bin": "\0" * 10_000_000}, "Add a big file")
    with pytest.raises(ManifestError, match="more than 200000 files or 100000 bytes"):
        src.load()
    assert src.describe()["refused"]["sha"] == bomb  # type: ignore[index]
    assert src.describe()["applied"]["sha"] == good  # type: ignore[index]
    assert not (src.cache / "staging").exists() and not (src.tree / "deploy/zeros.bin").exists()


def test_a_commit_without_the_folder_is_refused(upstream: Path, tmp_path: Path):
    commit(upstream, {"deploy/diplo.yaml": WEB}, "Add web")
    src = source(upstream, tmp_path / "home")
    src.load()
    gone = commit(upstream, {"deploy/diplo.yaml": None, "other/diplo.yaml": WEB}, "Move it")
    with pytest.raises(ManifestError) as exc:
        src.load()
    (issue,) = exc.value.issues
    assert issue.file == f"{gone[:10]}:deploy" and issue.line == 0
    assert "no folder 'deploy'" in issue.message
    assert (src.tree / "deploy" / "diplo.yaml").read_text() == WEB


def test_a_repository_that_cannot_be_fetched(tmp_path: Path):
    src = GitSource(str(tmp_path / "nowhere"), "main", "deploy", tmp_path / "home")
    with pytest.raises(DiploError) as exc:
        src.load()
    info = src.describe()
    assert info["poll_error"] == exc.value.message and info["poll_error"]
    assert info["last_poll"] is not None and info["last_poll_ok"] is None
    assert info["head"] is None and info["applied"] is None


def test_a_poll_error_clears_when_the_repository_is_back(upstream: Path, tmp_path: Path):
    commit(upstream, {"deploy/diplo.yaml": WEB}, "Add web")
    src = source(upstream, tmp_path / "home")
    first = src.load()
    upstream.rename(tmp_path / "moved")
    with pytest.raises(DiploError):
        src.load()
    assert src.describe()["poll_error"]
    assert src.describe()["applied"]["sha"] == first.revision.commit  # type: ignore[index]
    (tmp_path / "moved").rename(upstream)
    assert src.load().desired is first.desired
    assert src.describe()["poll_error"] is None


def test_a_branch_reset_to_the_applied_commit_forgets_the_refusal(upstream: Path, tmp_path: Path):
    good = commit(upstream, {"deploy/diplo.yaml": WEB}, "Add web")
    src = source(upstream, tmp_path / "home")
    src.load()
    commit(upstream, {"deploy/diplo.yaml": INVALID}, "Break it")
    with pytest.raises(ManifestError):
        src.load()
    git(upstream, "reset", "-q", "--hard", good)  # a revert by force-push
    assert src.load().revision.commit == good
    assert src.describe()["head"]["sha"] == good  # type: ignore[index]
    assert src.describe()["refused"] is None


def test_issues_name_the_commit_when_diplo_home_is_a_symlink(upstream: Path, tmp_path: Path):
    (tmp_path / "real-home").mkdir()
    (tmp_path / "home").symlink_to(tmp_path / "real-home")
    commit(upstream, {"deploy/diplo.yaml": WEB}, "Add web")
    src = source(upstream, tmp_path / "home")
    src.load()
    bad = commit(upstream, {"deploy/diplo.yaml": INVALID}, "Break it")
    with pytest.raises(ManifestError) as exc:
        src.load()
    assert [i.file for i in exc.value.issues] == [f"{bad[:10]}:deploy/diplo.yaml"]


# --- several sources -----------------------------------------------------------------


def folder_load(tmp_path: Path, name: str, text: str) -> Loaded:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "diplo.yaml").write_text(text)
    return FolderSource(folder).load()


def test_merge_of_one_source_is_that_source(tmp_path: Path):
    one = folder_load(tmp_path, "a", WEB)
    assert merge([one]) is one


def test_merge_puts_the_apps_side_by_side_with_their_revisions(tmp_path: Path):
    a = folder_load(tmp_path, "a", WEB + "  api:\n    image: busybox:latest\n")
    b = folder_load(tmp_path, "b", "project: blog\napps:\n  post:\n    image: busybox:latest\n")
    c = folder_load(tmp_path, "c", "project: docs\napps:\n  page:\n    image: busybox:latest\n")
    merged = merge([a, b, c])
    assert [x.name for x in merged.desired.apps] == ["api", "web", "post", "page"]
    assert merged.desired.projects == ("shop", "blog", "docs")
    assert len(merged.desired.files) == 3
    assert merged.revision == a.revision
    assert merged.of("api") == a.revision and merged.of("post") == b.revision
    assert merged.of("page") == c.revision
    assert merged.of("nope") == a.revision


def test_one_app_in_two_sources_is_an_error(tmp_path: Path):
    a = folder_load(tmp_path, "a", WEB)
    b = folder_load(tmp_path, "b", WEB.replace("shop", "blog"))
    with pytest.raises(ManifestError, match="defined by two sources") as exc:
        merge([a, b])
    (issue,) = exc.value.issues
    assert issue.file == b.desired.apps[0].source


def test_one_project_in_two_sources_is_an_error(tmp_path: Path):
    a = folder_load(tmp_path, "a", WEB)
    b = folder_load(tmp_path, "b", "project: shop\napps:\n  api:\n    image: busybox:latest\n")
    with pytest.raises(ManifestError, match="project 'shop' is named by two sources") as exc:
        merge([a, b])
    (issue,) = exc.value.issues
    assert issue.file == b.desired.apps[0].source


def test_loaded_of_an_app_without_its_own_revision():
    rev = Revision("folder:/x")
    assert Loaded(DesiredState(), rev).of("web") is rev


# --- a folder's loads, skipped while nothing they read changed -------------------------

RICH = """project: shop
apps:
  web:
    image: busybox:latest
    env_file: conf/web.env
    env:
      GREETING: ${GREETING:-hello}
    volumes:
      - ./conf/app.ini:/etc/app.ini:ro
      - ./data:/data
  api:
    build: ./api
"""


@pytest.fixture
def rich(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, FolderSource]:
    from diplo.manifest import reads

    # Files written by this test are "settled" at once (see reads.RACY).
    monkeypatch.setattr(reads, "RACY", 0.0)
    folder = tmp_path / "m"
    for sub in ("conf", "data", "api/src"):
        (folder / sub).mkdir(parents=True)
    (folder / "diplo.yaml").write_text(RICH)
    (folder / "conf/web.env").write_text("MODE=a\n")
    (folder / "conf/app.ini").write_text("x=1\n")
    (folder / "api/Dockerfile").write_text("FROM busybox\n")
    (folder / "api/src/main.py").write_text("print(1)\n")
    return folder, FolderSource(folder)


def _hashes(src: FolderSource) -> dict[str, str]:
    return {a.name: a.spec_hash for a in src.load().desired.apps}


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            lambda f: (f / "diplo.yaml").write_text(RICH + "  db:\n    image: x\n"), id="manifest"
        ),
        pytest.param(lambda f: (f / "conf/web.env").write_text("MODE=b\n"), id="env_file"),
        pytest.param(lambda f: (f / ".env").write_text("GREETING=hi\n"), id="new-dotenv"),
        pytest.param(lambda f: (f / "conf/app.ini").write_text("x=2\n"), id="mounted-file"),
        pytest.param(lambda f: (f / "api/src/util.py").write_text("\n"), id="context-file-added"),
        pytest.param(lambda f: (f / "api/src/main.py").write_text("print(2)\n"), id="context-edit"),
        pytest.param(lambda f: (f / "api/Dockerfile").write_text("FROM alpine\n"), id="dockerfile"),
        pytest.param(
            lambda f: (
                (f / "more").mkdir(),
                (f / "more/diplo.yaml").write_text(
                    WEB.replace("shop", "more").replace("web", "blog")
                ),
            ),
            id="nested-manifest",
        ),
    ],
)
def test_a_folder_is_loaded_again_when_anything_its_load_read_changes(rich, change):
    folder, src = rich
    first = _hashes(src)
    assert src.loads == 1
    assert _hashes(src) == first and src.loads == 1  # nothing changed: not read again
    change(folder)
    assert _hashes(src) != first and src.loads == 2
    assert _hashes(src) and src.loads == 2  # and kept again


def test_what_an_app_writes_in_a_mounted_folder_does_not_reload(rich):
    folder, src = rich
    src.load()
    (folder / "data/log.txt").write_text("written by the app\n")
    src.load()
    assert src.loads == 1
    (folder / "data/log.txt").unlink()
    (folder / "data").rmdir()  # gone: the manifest is now invalid, and says so
    with pytest.raises(ManifestError, match="does not exist"):
        src.load()


def test_a_retargeted_symlink_reloads(rich):
    folder, src = rich
    (folder / "conf/other.env").write_text("MODE=z\n")
    (folder / "conf/link.env").symlink_to("web.env")
    (folder / "diplo.yaml").write_text(RICH.replace("conf/web.env", "conf/link.env"))
    first = _hashes(src)
    (folder / "conf/link.env").unlink()
    (folder / "conf/link.env").symlink_to("other.env")
    assert _hashes(src) != first and src.loads == 2


def test_a_load_right_after_a_change_is_not_kept(tmp_path: Path):
    """A file changed in the timestamp tick of the load may have changed after it was
    read: that load is not kept (the next one reads again)."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "diplo.yaml").write_text(WEB)
    src = FolderSource(folder)
    src.load()
    src.load()
    assert src.loads == 2
