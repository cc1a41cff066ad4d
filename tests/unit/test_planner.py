"""The planner is pure: these tests feed it fixtures and read the plan."""

from __future__ import annotations

from dataclasses import replace

from diplo.model import (
    AppRecord,
    BuildImage,
    BuildRecord,
    BuildSpec,
    EnsureVolume,
    LedgerSnapshot,
    Mount,
    Observed,
    PullImage,
    RecordApplied,
    RemoveContainers,
    ResolvedPort,
    RunContainer,
    StartContainer,
)
from diplo.planner import diff_specs, normalize_image, plan, topological

from .factories import IMAGE_ID, app, running, state

IMAGES = {"busybox:latest": IMAGE_ID}


def ledger_for(*apps, builds=None) -> LedgerSnapshot:
    return LedgerSnapshot(
        apps={
            a.name: AppRecord(a.name, a.project, a.spec_hash, a.public_spec(), "t") for a in apps
        },
        builds=builds or {},
    )


def test_new_app_is_created_with_a_network():
    web = app("web")
    p = plan(state(web), Observed(images=IMAGES), LedgerSnapshot(), {})
    (ap,) = p.apps
    assert ap.kind == "create"
    assert [type(a) for a in ap.actions] == [RunContainer]
    run = ap.actions[0]
    assert run.name == "shop-web-1" and run.network == "diplo-shop" and run.replaces == ()
    assert [n.name for n in p.networks] == ["diplo-shop"]
    assert not p.in_sync


def test_unchanged_app_plans_no_action():
    web = app("web")
    observed = Observed(
        containers=(running(web),), images=IMAGES, networks=frozenset({"diplo-shop"})
    )
    p = plan(state(web), observed, ledger_for(web), {})
    assert p.in_sync
    assert p.apps[0].kind == "unchanged" and p.apps[0].actions == ()
    assert p.networks == ()


def test_running_container_without_ledger_record_is_only_recorded():
    web = app("web")
    observed = Observed(
        containers=(running(web),), images=IMAGES, networks=frozenset({"diplo-shop"})
    )
    (ap,) = plan(state(web), observed, LedgerSnapshot(), {}).apps
    assert ap.kind == "unchanged"
    assert [type(a) for a in ap.actions] == [RecordApplied]
    assert not ap.mutates


def test_changed_env_is_an_update_naming_the_field_without_its_value():
    old = app("web", env=(("LOG_LEVEL", "info"),))
    new = app("web", env=(("LOG_LEVEL", "debug"),))
    observed = Observed(containers=(running(old),), images=IMAGES)
    (ap,) = plan(state(new), observed, ledger_for(old), {}).apps
    assert ap.kind == "update"
    assert [c.path for c in ap.changes] == ["env.LOG_LEVEL"]
    assert "debug" not in repr(ap.changes) and "info" not in repr(ap.changes)
    run = ap.actions[-1]
    assert isinstance(run, RunContainer) and run.replaces == observed.containers


def test_only_the_changed_app_is_updated():
    db, web = app("db"), app("web", depends_on=("db",))
    web2 = app("web", depends_on=("db",), command=("httpd", "-f"))
    observed = Observed(containers=(running(db), running(web)), images=IMAGES)
    p = plan(state(db, web2), observed, ledger_for(db, web), {})
    kinds = {a.app: a.kind for a in p.apps}
    assert kinds == {"db": "unchanged", "web": "update"}


def test_dependency_change_does_not_recreate_the_dependent():
    db, web = app("db"), app("web", depends_on=("db",))
    db2 = app("db", env=(("X", "1"),))
    observed = Observed(containers=(running(db), running(web)), images=IMAGES)
    kinds = {a.app: a.kind for a in plan(state(db2, web), observed, ledger_for(db, web), {}).apps}
    assert kinds == {"db": "update", "web": "unchanged"}


def test_stopped_matching_container_is_started_not_recreated():
    web = app("web")
    stopped = running(web, state="exited")
    (ap,) = plan(
        state(web), Observed(containers=(stopped,), images=IMAGES), ledger_for(web), {}
    ).apps
    assert ap.kind == "start"
    assert ap.actions == (StartContainer("web", stopped),)


def test_extra_containers_of_an_app_are_removed():
    web = app("web")
    keep = running(web)
    stray = running(web, id="f" * 64, name="shop-web-1-old", spec_hash="old")
    (ap,) = plan(
        state(web), Observed(containers=(keep, stray), images=IMAGES), ledger_for(web), {}
    ).apps
    assert ap.kind == "update"
    assert ap.actions == (RemoveContainers("web", (stray,), "superseded containers"),)


def test_image_tag_moved_to_new_image_means_update():
    web = app("web")
    observed = Observed(containers=(running(web, image_id="sha256:old"),), images=IMAGES)
    (ap,) = plan(state(web), observed, ledger_for(web), {}).apps
    assert ap.kind == "update" and "now points to another image" in ap.reason


def test_missing_image_is_pulled_and_pull_policy_never_is_a_problem():
    web = app("web", image="shop/web:1")
    (ap,) = plan(state(web), Observed(), LedgerSnapshot(), {}).apps
    assert ap.actions[0] == PullImage("web", "shop/web:1")
    never = app("web", image="shop/web:1", pull_policy="never")
    p = plan(state(never), Observed(), LedgerSnapshot(), {})
    assert any("pull_policy is never" in x for x in p.problems)


def test_build_is_skipped_when_context_is_unchanged_and_image_present():
    build = BuildSpec("/src", "Dockerfile", (), "h1")
    web = app("web", image="shop/web:dev", build=build)
    images = {"shop/web:dev": "sha256:built"}
    builds = {"shop/web:dev": BuildRecord("shop/web:dev", "h1", "sha256:built")}
    # the container is gone, so it must be created, but the image is reused
    (ap,) = plan(state(web), Observed(images=images), LedgerSnapshot(builds=builds), {}).apps
    assert not any(isinstance(a, BuildImage) for a in ap.actions)
    # a changed context hash means a build
    web2 = app("web", image="shop/web:dev", build=replace(build, build_hash="h2"))
    (ap2,) = plan(state(web2), Observed(images=images), LedgerSnapshot(builds=builds), {}).apps
    assert isinstance(ap2.actions[0], BuildImage)
    # and so does a tag that was re-pointed by hand
    moved = {"shop/web:dev": "sha256:other"}
    (ap3,) = plan(state(web), Observed(images=moved), LedgerSnapshot(builds=builds), {}).apps
    assert isinstance(ap3.actions[0], BuildImage)


def test_named_volume_is_ensured_only_when_missing():
    web = app("web", mounts=(Mount("volume", "shop_data", "/data"),))
    (ap,) = plan(state(web), Observed(images=IMAGES), LedgerSnapshot(), {}).apps
    assert EnsureVolume("web", "shop", "shop_data") in ap.actions
    have = Observed(images=IMAGES, volumes=frozenset({"shop_data"}))
    (ap2,) = plan(state(web), have, LedgerSnapshot(), {}).apps
    assert not any(isinstance(a, EnsureVolume) for a in ap2.actions)


def test_orphan_is_removed_only_with_prune():
    web, old = app("web"), app("old")
    observed = Observed(containers=(running(web), running(old)), images=IMAGES)
    p = plan(state(web), observed, ledger_for(web, old), {})
    orphan = p.app("old")
    assert orphan.kind == "remove" and orphan.actions == ()
    pruned = plan(state(web), observed, ledger_for(web, old), {}, prune=True).app("old")
    assert pruned.actions == (
        RemoveContainers("old", (running(old),), "no longer in the manifests"),
    )


def test_only_prunable_apps_are_pruned():
    """A controller prunes only what its sources deployed (security review H6)."""
    web, old, theirs = app("web"), app("old"), app("theirs")
    observed = Observed(containers=(running(web), running(old), running(theirs)), images=IMAGES)
    ledger = ledger_for(web, old, theirs)
    p = plan(state(web), observed, ledger, {}, prune=True, prunable=frozenset({"web", "old"}))
    assert p.app("old").actions and not p.app("theirs").actions
    assert p.app("theirs").reason == "not deployed by this source (kept)"


def test_other_projects_are_never_pruned():
    web, other = app("web"), app("api", project="billing")
    observed = Observed(containers=(running(web), running(other)), images=IMAGES)
    p = plan(state(web), observed, ledger_for(web, other), {}, prune=True)
    assert p.app("api") is None


def test_app_name_owned_by_another_project_is_a_problem():
    mine = app("web", project="shop")
    theirs = running(app("web", project="blog"))
    p = plan(state(mine), Observed(containers=(theirs,), images=IMAGES), LedgerSnapshot(), {})
    assert any("taken by project 'blog'" in x for x in p.problems)


def test_foreign_container_with_our_name_is_a_problem():
    web = app("web")
    observed = Observed(images=IMAGES, foreign_names=frozenset({"shop-web-1"}))
    p = plan(state(web), observed, LedgerSnapshot(), {})
    assert any("Diplo does not own" in x for x in p.problems)


def test_ports_are_passed_to_the_container():
    web = app("web")
    ports = {"web": (ResolvedPort("8080/tcp", "", 20001, True),)}
    (ap,) = plan(state(web), Observed(images=IMAGES), LedgerSnapshot(), ports).apps
    assert ap.actions[-1].ports == ports["web"]


def test_only_limits_the_plan():
    a, b = app("a"), app("b")
    p = plan(state(a, b), Observed(images=IMAGES), LedgerSnapshot(), {}, only=frozenset({"b"}))
    assert [x.app for x in p.apps] == ["b"]


def test_a_plan_of_some_apps_is_the_whole_plan_of_those_apps():
    """A reconcile plans one app (and looks at no other): what it plans for its apps,
    in their order, is what a plan of everything plans for them, orphans included."""
    a = app("a")
    b = app("b", depends_on=("a",))
    c = app("c", depends_on=("b",), env=(("NEW", "1"),))
    d = app("d")
    gone, theirs = app("gone"), app("api", project="billing")
    observed = Observed(
        containers=(running(a), running(b), running(app("c")), running(gone), running(theirs)),
        images=IMAGES,
        networks=frozenset({"diplo-shop"}),
    )
    ledger = ledger_for(a, b, app("c"), gone, theirs)
    desired = state(d, c, b, a)
    whole = plan(desired, observed, ledger, {}, prune=True)
    for only in ({"c"}, {"a", "c"}, {"gone"}, {"api"}, {"d", "gone"}, {"nothing"}):
        some = plan(desired, observed, ledger, {}, prune=True, only=frozenset(only))
        assert some.apps == tuple(p for p in whole.apps if p.app in only), only
        assert some.networks == whole.networks == ()
    assert [p.app for p in whole.apps] == ["a", "b", "c", "d", "gone"]
    assert whole.app("c").kind == "update" and whole.app("gone").kind == "remove"


def test_topological_order_puts_dependencies_first():
    c = app("c", depends_on=("b",))
    b = app("b", depends_on=("a",))
    a = app("a")
    z = app("z")
    assert [x.name for x in topological((z, c, b, a))] == ["a", "b", "c", "z"]


def test_diff_specs_lists_nested_paths():
    changes = diff_specs(
        {"env": {"A": "1"}, "ports": ["80"]}, {"env": {"A": "2", "B": "x"}, "ports": ["80"]}
    )
    assert [(c.path, c.old, c.new) for c in changes] == [("env.A", "1", "2"), ("env.B", None, "x")]
    assert diff_specs(None, {"a": 1}) == ()


def test_normalize_image():
    assert normalize_image("busybox") == "busybox:latest"
    assert normalize_image("localhost:5000/web") == "localhost:5000/web:latest"
    assert normalize_image("web:1") == "web:1"
    assert normalize_image("web@sha256:abc") == "web@sha256:abc"


def crashed_mid_deploy(old, new):
    """What a deploy that died before the health verdict leaves: the recorded release
    stopped and renamed aside, the new container running but never verified."""
    previous = running(
        old, state="exited", name="shop-web-1-old-aaaaaaaaaaaa", id="a" * 64, created=1
    )
    unverified = running(new, id="b" * 64, created=2)
    return Observed(containers=(previous, unverified), images=IMAGES), previous, unverified


def test_a_container_from_a_deploy_that_never_finished_is_not_adopted():
    old, new = app("web"), app("web", env=(("A", "1"),))
    observed, previous, unverified = crashed_mid_deploy(old, new)
    (p,) = plan(state(new), observed, ledger_for(old), {}).apps
    assert p.kind == "update" and "never finished" in p.reason
    remove, start, run = p.actions
    # the unverified container goes, the recorded release comes back under its name...
    assert isinstance(remove, RemoveContainers) and remove.containers == (unverified,)
    assert isinstance(start, StartContainer) and start.container == previous
    assert start.rename_to == "shop-web-1"
    # ...and the new spec is deployed again through the health gate, replacing it
    assert isinstance(run, RunContainer)
    (replaced,) = run.replaces
    assert replaced.id == previous.id and replaced.name == "shop-web-1"
    assert replaced.state == "running"
    assert not any(isinstance(a, RecordApplied) for a in p.actions)


def test_reverting_to_the_recorded_release_after_a_crash_restores_it():
    old, new = app("web"), app("web", env=(("A", "1"),))
    observed, previous, unverified = crashed_mid_deploy(old, new)
    (p,) = plan(state(old), observed, ledger_for(old), {}).apps
    remove, start = p.actions
    assert isinstance(remove, RemoveContainers) and remove.containers == (unverified,)
    assert isinstance(start, StartContainer) and start.container == previous
    assert start.rename_to == "shop-web-1"


def test_an_unverified_container_without_a_previous_release_is_gated_again():
    old, new = app("web"), app("web", env=(("A", "1"),))
    unverified = running(new)
    (p,) = plan(
        state(new), Observed(containers=(unverified,), images=IMAGES), ledger_for(old), {}
    ).apps
    assert p.kind == "update"
    (run,) = p.actions
    assert isinstance(run, RunContainer) and run.replaces == (unverified,)


def test_a_release_renamed_aside_by_a_deploy_that_died_before_create_is_restored():
    old, new = app("web"), app("web", env=(("A", "1"),))
    observed, previous, _ = crashed_mid_deploy(old, new)
    observed = replace(observed, containers=(previous,))  # died before `create`
    (p,) = plan(state(new), observed, ledger_for(old), {}).apps
    assert p.kind == "update" and "never finished" in p.reason
    start, run = p.actions
    assert isinstance(start, StartContainer) and start.rename_to == "shop-web-1"
    assert isinstance(run, RunContainer) and run.replaces[0].id == previous.id
