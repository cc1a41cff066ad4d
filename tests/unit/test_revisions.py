"""Rollbacks: the restorable record of an app, kept images, pins, over the in-memory
engine and a real SQLite ledger."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from diplo.errors import InputError
from diplo.executor import Executor, kept_image_ref
from diplo.ledger import Ledger
from diplo.model import LABEL_SPEC_HASH, BuildSpec, Revision, app_record, restore_app
from diplo.ops.context import Context
from diplo.ops.rollback import apply_pins, restore, target
from diplo.planner import plan
from diplo.runtime.memory import MemoryRuntime

from .factories import IMAGE_ID, app, port, state


@pytest.fixture
def ctx(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    yield Context(_runtime=MemoryRuntime(images={"busybox:latest": IMAGE_ID}), _ledger=ledger)
    ledger.close()


def deploy(ctx, desired):
    p = plan(desired, ctx.runtime.observe(), ctx.ledger.snapshot(), {})
    assert not p.problems, p.problems
    return Executor(ctx.runtime, ctx.ledger, workers=2, sleep=lambda s: None).run(p)


def test_record_round_trip_restores_the_app_with_values_from_the_manifest():
    web = app(
        "web",
        env=(("TOKEN", "s3cret"), ("MODE", "prod")),
        ports=(port(8080),),
        command=("httpd", "-f"),
        labels=(("team", "shop"),),
        build=BuildSpec("/src", "Dockerfile", (("V", "1"),), "abc"),
    )
    record = app_record(web)
    assert "s3cret" not in json.dumps(record)  # digests only, never a value
    back, missing = restore_app(json.loads(json.dumps(record)), dict(web.env), IMAGE_ID)
    assert missing == [] and back is not None
    assert back == replace(web, image=IMAGE_ID, build=None, pull_policy="never")


def test_restore_names_env_keys_whose_value_changed():
    web = app("web", env=(("TOKEN", "old"), ("MODE", "prod")))
    back, missing = restore_app(app_record(web), {"TOKEN": "new", "MODE": "prod"}, IMAGE_ID)
    assert back is None and missing == ["TOKEN"]


def release(ctx, n: int, **kw):
    """Version `n` of web: an image of its own."""
    ctx.runtime.images[f"web:{n}"] = f"sha256:{n:064d}"
    kw.setdefault("keep_images", 2)
    return app("web", image=f"web:{n}", **kw)


def web_tag(ctx, dep_id: int) -> str:
    """The tag that keeps deployment `dep_id` of web's image, in this test's ledger."""
    return kept_image_ref("web", dep_id, ctx.ledger.identity)


def test_each_image_is_kept_and_old_ones_are_dropped(ctx):
    for n in range(1, 5):
        assert deploy(ctx, state(release(ctx, n))).ok
    kept = ctx.ledger.kept_images("web")
    assert [tag for _, tag in kept] == [web_tag(ctx, 4), web_tag(ctx, 3)]
    images = ctx.runtime.images
    assert web_tag(ctx, 4) in images and web_tag(ctx, 1) not in images
    assert ("untag", web_tag(ctx, 1)) in ctx.runtime.calls


def test_deployments_of_a_kept_image_share_its_tag_and_never_push_older_images_out(ctx):
    """A crashing app healed again and again (each heal a deployment of the same image),
    or env-only releases, must not push the release before it out of `keep_images`: a
    rollback to it must still find its image. They cost the engine no tag either."""
    assert deploy(ctx, state(release(ctx, 1))).ok
    assert deploy(ctx, state(release(ctx, 2))).ok
    ctx.runtime.calls.clear()
    for n in range(5):  # five more deployments of image 2
        assert deploy(ctx, state(release(ctx, 2, env=(("N", str(n)),)))).ok
    assert not [c for c in ctx.runtime.calls if c[0] in ("tag", "untag")]
    kept = ctx.ledger.kept_images("web")
    assert {tag for _, tag in kept} == {web_tag(ctx, 1), web_tag(ctx, 2)}
    assert [d for d, tag in kept if tag == web_tag(ctx, 2)] == [7, 6, 5, 4, 3, 2]
    # the release before them can still be restored, and so can each of them
    assert restore(ctx, 1, None).image == "sha256:" + "1".zfill(64)
    assert restore(ctx, 3, release(ctx, 2, env=(("N", "0"),))).image == "sha256:" + "2".zfill(64)
    # a third image: the oldest one goes, with every deployment that shared the tag
    assert deploy(ctx, state(release(ctx, 3))).ok
    assert ("untag", web_tag(ctx, 1)) in ctx.runtime.calls
    tags = [tag for _, tag in ctx.ledger.kept_images("web")]
    assert tags == [web_tag(ctx, 8)] + [web_tag(ctx, 2)] * 6


def test_heals_of_one_release_leave_one_deployment_holding_its_tag(ctx):
    """Each heal of a crashing app is a deployment of the same release: it takes the tag
    over, so that the history's trim can drop the ones before it (they would pile up
    for as long as the image is kept); a deployment a rollback pins keeps its own."""
    v1 = release(ctx, 1)
    assert deploy(ctx, state(v1)).ok
    ctx.ledger.pin("web", 1, "a rollback")
    ctx.runtime.calls.clear()
    for _ in range(3):  # removed by hand, and healed
        ctx.runtime.containers.clear()
        assert deploy(ctx, state(v1)).ok
    assert not [c for c in ctx.runtime.calls if c[0] in ("tag", "untag")]
    tag = web_tag(ctx, 1)
    assert ctx.ledger.kept_images("web") == [(4, tag), (1, tag)]
    assert restore(ctx, 4, None).image == restore(ctx, 1, None).image


def test_deployments_record_their_revision(ctx):
    rev = Revision("folder:/x", "a" * 40, "Add web", "Ann <a@x>", "2026-11-29T00:00:00Z", True)
    p = plan(state(app("web")), ctx.runtime.observe(), ctx.ledger.snapshot(), {})
    assert Executor(ctx.runtime, ctx.ledger, sleep=lambda s: None, revision=rev).run(p).ok
    (dep,) = ctx.ledger.deployments("web")
    assert (dep.source, dep.commit_sha, dep.commit_subject, dep.dirty) == (
        "folder:/x",
        "a" * 40,
        "Add web",
        1,
    )
    assert "record_json" not in dep.public()


def test_rollback_target_is_the_last_good_other_spec(ctx):
    v1, v2 = app("web", env=(("V", "1"),)), app("web", env=(("V", "2"),))
    deploy(ctx, state(v1))
    deploy(ctx, state(v2))
    assert target(ctx, "web", None).spec_hash == v1.spec_hash
    with pytest.raises(InputError, match="no deployment 99"):
        target(ctx, "web", 99)


def test_a_pin_keeps_the_app_on_the_restored_deployment_until_resumed(ctx):
    v1 = app("web", env=(("V", "1"),))
    v2 = app("web", env=(("V", "1"),), command=("sleep", "1000"))
    deploy(ctx, state(v1))
    deploy(ctx, state(v2))
    dep = target(ctx, "web", None)
    assert dep.spec_hash == v1.spec_hash
    ctx.ledger.pin("web", dep.id, "test")
    pinned = apply_pins(ctx, state(v2))
    assert pinned.rollback_of == {"web": dep.id} and not pinned.blocked
    assert deploy(ctx, pinned.desired).ok
    (c,) = ctx.runtime.containers.values()
    assert c.spec.labels[LABEL_SPEC_HASH] == v1.spec_hash and c.spec.command is None
    assert c.spec.image == IMAGE_ID  # the kept image, by ID: no build, no pull
    # Pinned: the manifest applied again changes nothing.
    ctx.runtime.calls.clear()
    assert deploy(ctx, apply_pins(ctx, state(v2)).desired).ok
    assert ctx.runtime.calls == []
    ctx.ledger.unpin("web")
    assert deploy(ctx, apply_pins(ctx, state(v2)).desired).ok
    (c,) = ctx.runtime.containers.values()
    assert c.spec.labels[LABEL_SPEC_HASH] == v2.spec_hash


def test_restore_refuses_when_an_env_value_changed_since(ctx):
    v1, v2 = app("web", env=(("V", "1"),)), app("web", env=(("V", "2"),))
    deploy(ctx, state(v1))
    deploy(ctx, state(v2))
    dep = target(ctx, "web", None)
    with pytest.raises(InputError, match="env V"):
        restore(ctx, dep.id, v2)


def test_a_pin_whose_image_is_gone_blocks_the_app_and_keeps_it(ctx):
    v1, v2 = app("web"), app("web", command=("sleep", "1"))
    deploy(ctx, state(v1))
    deploy(ctx, state(v2))
    dep = target(ctx, "web", None)
    ctx.ledger.pin("web", dep.id, "test")
    ctx.runtime.images.clear()
    pinned = apply_pins(ctx, state(v2))
    assert "no longer kept" in pinned.blocked["web"]
    assert pinned.desired.app("web") == v2


def test_a_removed_app_keeps_no_images(ctx):
    deploy(ctx, state(app("web"), app("api")))
    ((_, tag),) = ctx.ledger.kept_images("web")
    assert tag in ctx.runtime.images
    p = plan(state(app("api")), ctx.runtime.observe(), ctx.ledger.snapshot(), {}, prune=True)
    assert Executor(ctx.runtime, ctx.ledger, sleep=lambda s: None).run(p).ok
    assert ctx.ledger.kept_images("web") == []
    assert not [t for t in ctx.runtime.images if t.startswith("diplo-kept/web:")]
    assert [t for t in ctx.runtime.images if t.startswith("diplo-kept/api:")]


def test_rollback_to_a_release_that_differed_only_in_an_env_value(ctx, tmp_path, monkeypatch):
    """The most common rollback (a bad env value) works: each deployment's values are kept
    sealed with the host's key; the ledger shows only digests (issue 10, point 7)."""
    from diplo.ops.apply import apply

    monkeypatch.setenv("DIPLO_HOME", str(tmp_path / "home"))
    v1, v2 = app("web", env=(("DB_PASS", "s3cret-1"),)), app("web", env=(("DB_PASS", "oops"),))
    assert apply(ctx, state(v1)).ok
    assert apply(ctx, state(v2)).ok
    dep = target(ctx, "web", None)
    restored = restore(ctx, dep.id, v2)
    assert restored.env == (("DB_PASS", "s3cret-1"),) and restored.spec_hash != v2.spec_hash
    ctx.ledger.pin("web", dep.id, "test")
    assert apply(ctx, state(v2)).ok  # the pin restores v1's value
    (c,) = ctx.runtime.containers.values()
    assert dict(c.spec.env) == {"DB_PASS": "s3cret-1"}
    raw = (tmp_path / "ledger.db").read_bytes()
    wal = tmp_path / "ledger.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert b"s3cret-1" not in raw and b"oops" not in raw  # sealed, never in clear


def test_two_homes_on_one_engine_keep_their_own_images(tmp_path):
    """Two Diplo homes (two ledgers) on one engine. An app name is the engine's one at a
    time, but kept images outlive a container removed by hand: the other home may then
    deploy an app of that name, with the same deployment numbers. Their tags were once
    the same (`diplo-kept/web:d1`): the other's deploy moved ours to its image, so a
    rollback here ran theirs, and its prune untagged ours. Each ledger's tags carry its
    own identity now."""
    engine = MemoryRuntime(images={"busybox:latest": IMAGE_ID})
    ours = Context(_runtime=engine, _ledger=Ledger(tmp_path / "ours" / "ledger.db"))
    theirs = Context(_runtime=engine, _ledger=Ledger(tmp_path / "theirs" / "ledger.db"))
    assert ours.ledger.identity != theirs.ledger.identity
    assert ours.ledger.identity == Ledger(tmp_path / "ours" / "ledger.db").identity  # kept
    for n in (1, 2):
        assert deploy(ours, state(release(ours, n, project="a"))).ok
    engine.containers.clear()  # docker rm -f, by hand, while our serve is down
    for n in (7, 8, 9):  # theirs keep one image: their prune untags their d1 and d2
        assert deploy(theirs, state(release(theirs, n, project="b", keep_images=1))).ok
    assert [d for d, _ in theirs.ledger.kept_images("web")] == [3]
    assert [d for d, _ in ours.ledger.kept_images("web")] == [2, 1]
    assert restore(ours, 1, None).image == "sha256:" + "1".zfill(64)
    assert restore(ours, 2, None).image == "sha256:" + "2".zfill(64)
    ours.ledger.close()
    theirs.ledger.close()


def test_a_rollback_to_a_tag_moved_to_another_image_is_refused(ctx):
    """A kept tag retagged outside Diplo (or by an older Diplo of another home) names an
    image the deployment never ran: the rollback says so and changes nothing."""
    assert deploy(ctx, state(release(ctx, 1))).ok
    assert deploy(ctx, state(release(ctx, 2))).ok
    ctx.runtime.images[web_tag(ctx, 1)] = "sha256:" + "6".zfill(64)  # docker tag ... by hand
    with pytest.raises(InputError, match="now names another image") as err:
        restore(ctx, 1, None)
    assert web_tag(ctx, 1) in err.value.message
