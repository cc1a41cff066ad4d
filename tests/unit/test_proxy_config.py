"""The Caddy JSON config built from the host's proxy settings and the apps' routes."""

from __future__ import annotations

import json

import pytest

from diplo.errors import InputError
from diplo.proxy.config import (
    CertFiles,
    ProxySettings,
    Route,
    boot_config,
    build_config,
    check_switch,
    draining_id,
    draining_of,
    is_internal,
    upstreams_id,
    upstreams_of,
    with_draining,
)

S = ProxySettings(http_port=8080, https_port=8443)


def servers(config: dict) -> dict:
    return config["apps"]["http"]["servers"]


def handler(config: dict, ident: str) -> dict:
    for server in servers(config).values():
        for route in server["routes"]:
            for h in route["handle"]:
                if h.get("@id") == ident:
                    return h
    raise AssertionError(f"no handler {ident}")


def route_for(config: dict, server: str, domain: str) -> dict:
    for route in servers(config)[server]["routes"]:
        if any(domain in m.get("host", []) for m in route.get("match", [])):
            return route
    raise AssertionError(f"no route for {domain} on {server}")


def test_one_internal_app_is_served_over_https_with_an_id_on_its_upstreams() -> None:
    r = Route("shop/web", ("app.localhost",), ("10.0.0.2:8080",), tls="internal")
    config = build_config(S, [r])
    assert config["admin"] == {"listen": "unix//diplo/admin.sock", "origins": ["localhost"]}
    https = servers(config)["https"]
    assert https["listen"] == [":8443"]
    # Caddy's own redirects drop a non-standard port: ours are on the http server.
    assert https["automatic_https"] == {
        "disable_redirects": True,
        "ignore_loaded_certificates": True,  # certificates loaded from storage stay managed
    }
    assert https["protocols"] == servers(config)["http"]["protocols"] == ["h1", "h2"]
    proxy = route_for(config, "https", "app.localhost")["handle"][0]
    assert proxy["handler"] == "reverse_proxy"
    assert proxy["@id"] == upstreams_id("shop/web") == "upstreams:shop:web"
    assert proxy["upstreams"] == [{"dial": "10.0.0.2:8080"}]
    assert "flush_interval" not in proxy  # -1 would cut requests in flight on a switch
    policies = config["apps"]["tls"]["automation"]["policies"]
    assert policies == [{"subjects": ["app.localhost"], "issuers": [{"module": "internal"}]}]
    assert config["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is False
    # The last route of each server answers 404 for a host no app serves.
    for server in servers(config).values():
        assert server["routes"][-1]["handle"][0]["status_code"] == 404
        assert "match" not in server["routes"][-1]


def test_http_redirects_tls_domains_to_https_on_the_configured_port() -> None:
    config = build_config(S, [Route("p/a", ("a.localhost",), ("10.0.0.2:80",))])
    redirect = route_for(config, "http", "a.localhost")["handle"][0]
    assert redirect["status_code"] == 308
    location = redirect["headers"]["Location"]
    assert location == ["https://{http.request.host}:8443{http.request.uri}"]
    standard = build_config(ProxySettings(), [Route("p/a", ("a.localhost",), ("10.0.0.2:80",))])
    redirect = route_for(standard, "http", "a.localhost")["handle"][0]
    assert redirect["headers"]["Location"] == ["https://{http.request.host}{http.request.uri}"]
    assert servers(standard)["http"]["listen"] == [":80"]
    assert servers(standard)["https"]["listen"] == [":443"]


def test_tls_off_apps_are_served_in_plain_http_and_get_no_https_server() -> None:
    config = build_config(S, [Route("p/a", ("plain.example.com",), ("10.0.0.2:80",), tls="off")])
    assert "https" not in servers(config)
    assert "tls" not in config["apps"]
    route = route_for(config, "http", "plain.example.com")
    assert route["handle"][0]["handler"] == "reverse_proxy"
    assert route["handle"][0]["@id"] == "upstreams:p:a"


def test_auto_picks_acme_for_public_names_and_the_internal_ca_for_the_rest() -> None:
    names = (
        "shop.example.com",
        "localhost",
        "a.localhost",
        "db.internal",
        "printer.local",
        "x.test",
        "10.1.2.3",
        "::1",
        "intranet",
    )
    config = build_config(
        ProxySettings(email="ops@example.com"), [Route("p/a", names, ("10.0.0.2:80",))]
    )
    internal, acme = config["apps"]["tls"]["automation"]["policies"]
    assert acme == {
        "subjects": ["shop.example.com"],
        "issuers": [{"module": "acme", "email": "ops@example.com"}],
    }
    assert internal["issuers"] == [{"module": "internal"}]
    assert sorted(internal["subjects"]) == sorted(n for n in names if n != "shop.example.com")
    assert not is_internal("example.com") and is_internal("App.LOCALHOST.")


def test_acme_challenges_follow_non_standard_ports() -> None:
    config = build_config(S, [Route("p/a", ("shop.example.com",), ("10.0.0.2:80",))])
    (policy,) = config["apps"]["tls"]["automation"]["policies"]
    assert policy["issuers"] == [
        {
            "module": "acme",
            "challenges": {
                "http": {"alternate_port": 8080},
                "tls-alpn": {"alternate_port": 8443},
            },
        }
    ]


def test_own_certificate_files_are_loaded_and_not_managed() -> None:
    tls = CertFiles("/diplo/certs/a.cert.pem", "/diplo/certs/a.key.pem")
    config = build_config(S, [Route("p/a", ("shop.example.com",), ("10.0.0.2:80",), tls=tls)])
    assert config["apps"]["tls"] == {
        "certificates": {
            "load_files": [
                {
                    "certificate": "/diplo/certs/a.cert.pem",
                    "key": "/diplo/certs/a.key.pem",
                    "tags": ["p/a"],
                }
            ]
        }
    }
    assert route_for(config, "https", "shop.example.com")
    # Never obtained from a CA, though loaded certificates are otherwise still managed.
    auto = servers(config)["https"]["automatic_https"]
    assert auto["skip_certificates"] == ["shop.example.com"]


def test_stored_certificates_of_managed_domains_are_loaded_from_storage() -> None:
    routes = [
        Route("p/a", ("a.localhost",), ("10.0.0.2:80",)),
        Route("p/b", ("shop.example.com",), ("10.0.0.3:80",)),
        Route("p/c", ("c.localhost",), ("10.0.0.4:80",)),  # nothing stored yet
        Route("p/d", ("d.test",), ("10.0.0.5:80",), tls="off"),
    ]
    stored = [
        "certificates/local/a.localhost/a.localhost.crt",
        "certificates/local/a.localhost/a.localhost.json",
        "certificates/local/a.localhost/a.localhost.key",
        "certificates/local/shop.example.com/shop.example.com.crt",  # an issuer it left
        "certificates/local/shop.example.com/shop.example.com.key",
        "certificates/acme-v02.api.letsencrypt.org-directory/shop.example.com/shop.example.com.crt",
        "certificates/acme-v02.api.letsencrypt.org-directory/shop.example.com/shop.example.com.key",
        "certificates/local/c.localhost/c.localhost.crt",  # its key is missing
        "certificates/local/d.test/d.test.crt",
        "certificates/local/d.test/d.test.key",
    ]
    config = build_config(S, routes, stored)
    acme = "certificates/acme-v02.api.letsencrypt.org-directory/shop.example.com/shop.example.com"
    assert config["apps"]["tls"]["certificates"]["load_storage"]["pairs"] == [
        {
            "certificate": "certificates/local/a.localhost/a.localhost.crt",
            "key": "certificates/local/a.localhost/a.localhost.key",
        },
        {"certificate": f"{acme}.crt", "key": f"{acme}.key"},
    ]
    assert "certificates" not in build_config(S, routes)["apps"]["tls"]


def test_health_checks_and_load_balancing() -> None:
    r = Route(
        "p/a",
        ("a.localhost",),
        ("10.0.0.3:80", "10.0.0.2:80"),
        lb_policy="least_conn",
        health_uri="/up",
    )
    proxy = handler(build_config(S, [r]), "upstreams:p:a")
    assert proxy["upstreams"] == [{"dial": "10.0.0.2:80"}, {"dial": "10.0.0.3:80"}]
    assert proxy["load_balancing"]["selection_policy"] == {"policy": "least_conn"}
    assert proxy["health_checks"]["active"]["uri"] == "/up"
    assert proxy["health_checks"]["passive"]["max_fails"] >= 1
    no_active = handler(build_config(S, [Route("p/a", ("a.localhost",), ())]), "upstreams:p:a")
    assert "active" not in no_active["health_checks"]


def test_two_apps_get_two_routes_and_each_a_draining_holder_that_never_matches() -> None:
    routes = [
        Route("p/b", ("b.localhost",), ("10.0.0.3:80",)),
        Route("p/a", ("a.localhost", "www.a.localhost"), ("10.0.0.2:80",)),
    ]
    config = build_config(S, routes)
    hosts = [r["match"][0]["host"] for r in servers(config)["https"]["routes"][:-1]]
    assert hosts == [["a.localhost", "www.a.localhost"], ["b.localhost"]]
    for key in ("p/a", "p/b"):
        holder = handler(config, draining_id(key))
        assert holder["upstreams"] == []
    drains = [r for r in servers(config)["http"]["routes"] if "vars" in r.get("match", [{}])[0]]
    assert len(drains) == 2


def test_the_same_input_gives_the_same_json_in_any_order() -> None:
    a = Route("p/a", ("www.a.test", "a.test"), ("10.0.0.3:80", "10.0.0.2:80"))
    b = Route("p/b", ("b.test",), ("10.0.0.4:80",), tls="off")
    one = json.dumps(build_config(S, [a, b]))
    two = json.dumps(build_config(S, [b, a]))
    three = json.dumps(
        build_config(S, [b, Route("p/a", ("a.test", "www.a.test"), ("10.0.0.2:80", "10.0.0.3:80"))])
    )
    assert one == two == three


def test_no_routes_still_gives_a_config_with_only_the_admin_socket_and_a_404() -> None:
    config = build_config(S, [])
    assert list(servers(config)) == ["http"]
    assert len(servers(config)["http"]["routes"]) == 1
    assert boot_config(S) == {"admin": config["admin"]}


def test_draining_upstreams_are_carried_over() -> None:
    config = build_config(S, [Route("p/a", ("a.localhost",), ("10.0.0.2:80",))])
    carried = with_draining(config, {"p/a": ["10.0.0.9:80"]})
    assert draining_of(carried) == {"draining:p:a": ["10.0.0.9:80"]}
    assert draining_of(None) == {}


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ([Route("nope", ("a.test",), ())], "'nope' is not project/app"),
        ([Route("p/a", (), ())], "p/a: no domains"),
        ([Route("p/a", ("a.test",), ("10.0.0.2",))], "upstream '10.0.0.2' is not host:port"),
        (
            [Route("p/a", ("a.test",), ()), Route("p/b", ("A.test",), ())],
            "domain A.test is claimed by p/a and p/b",
        ),
        ([Route("p/a", ("a.test",), ()), Route("p/a", ("b.test",), ())], "p/a is given twice"),
        ([Route("p/a", ("a.test",), (), health_uri="up")], "must start with /"),
        ([Route("p/a", ("a.test",), (), tls="maybe")], "tls 'maybe'"),  # type: ignore[arg-type]
        ([Route("p/a", ("a.test",), (), lb_policy="random")], "lb_policy 'random'"),  # type: ignore[arg-type]
    ],
)
def test_bad_routes_are_refused_with_what_is_wrong(routes: list[Route], message: str) -> None:
    with pytest.raises(InputError) as err:
        build_config(S, routes)
    assert message in str(err.value)
    assert "nothing was changed" in str(err.value)


def test_bad_ports_are_refused() -> None:
    with pytest.raises(InputError, match="both 8080"):
        build_config(ProxySettings(http_port=8080, https_port=8080), [])
    with pytest.raises(InputError, match="70000 is not a port"):
        build_config(ProxySettings(https_port=70000), [])


def test_a_switch_checks_its_key_and_upstreams() -> None:
    check_switch("p/a", ["10.0.0.2:80", "[::1]:80", "web:8080"])
    with pytest.raises(InputError, match="'x:y' is not host:port"):
        check_switch("p/a", ["x:y"])
    with pytest.raises(InputError, match="not project/app"):
        check_switch("a", [])


def test_the_upstreams_each_app_is_served_from_are_read_back_from_either_server():
    routes = [
        Route("p/a", ("a.localhost",), ("10.0.0.2:80", "10.0.0.3:80"), tls="internal"),
        Route("p/b", ("b.localhost",), ("10.0.0.4:80",), tls="off"),
    ]
    config = build_config(ProxySettings(8080, 8443), routes)
    assert upstreams_of(config) == {"p/a": ["10.0.0.2:80", "10.0.0.3:80"], "p/b": ["10.0.0.4:80"]}
    assert upstreams_of(None) == {} and upstreams_of({}) == {}


def test_both_servers_log_requests_to_a_bounded_file_without_uris_headers_or_addresses() -> None:
    secure = Route("p/web", ("web.localhost",), ("10.0.0.2:80",), tls="internal")
    plain = Route("p/api", ("api.localhost",), ("10.0.0.3:80",), tls="off")
    config = build_config(S, [secure, plain])
    logs = config["logging"]["logs"]
    assert logs["default"] == {"exclude": ["http.log.access"]}  # not in the engine's log
    access = logs["diplo_access"]
    assert access["include"] == ["http.log.access"]
    assert access["writer"] == {
        "output": "file",
        "filename": "/diplo/access/access.log",
        "roll_size_mb": 10,
        "roll_keep": 1,
        "roll_gzip": False,
    }
    dropped = access["encoder"]["fields"]
    for field in ("request>uri", "request>headers", "request>remote_ip", "resp_headers"):
        assert dropped[field] == {"filter": "delete"}
    assert servers(config)["https"]["logs"] == {}
    # the plain server skips the hosts it only redirects, with and without the port
    assert servers(config)["http"]["logs"] == {
        "skip_hosts": ["web.localhost", "web.localhost:8080"]
    }
    default_ports = build_config(ProxySettings(), [secure])
    assert servers(default_ports)["http"]["logs"] == {"skip_hosts": ["web.localhost"]}
    assert servers(build_config(S, [plain]))["http"]["logs"] == {}
    json.dumps(config)
