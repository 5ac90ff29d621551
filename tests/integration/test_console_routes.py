"""The console's files: served at / without a key (they hold no data), with a CSP that allows
nothing from elsewhere and no inline script; the API keeps /v1, /docs and /openapi.json."""

from __future__ import annotations

import re

import pytest

from app.console import STATIC


def test_the_console_page_loads_without_a_key_under_a_strict_csp(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'",
                      "connect-src 'self'", "frame-ancestors 'none'"):  # fmt: skip
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "/console/console.js" in r.text and "/console/console.css" in r.text


@pytest.mark.parametrize(
    "name, kind", [("console.js", "text/javascript"), ("console.css", "text/css")]
)
def test_console_assets_are_served_from_the_package(client, name, kind):
    r = client.get(f"/console/{name}")
    assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    assert r.content == (STATIC / name).read_bytes()


def test_an_unknown_console_file_is_a_404_in_the_api_envelope(client):
    r = client.get("/console/..%2Fapp%2Fconfig.py")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/console/index.html")
    assert r.status_code == 404


def test_the_api_keeps_its_paths_and_leaves_the_console_out_of_its_schema(client, auth):
    assert client.get("/v1/tasks", headers=auth).status_code == 200
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/console") for p in paths)


def test_the_console_never_loads_from_elsewhere_nor_writes_html_from_data():
    """Every asset URL in the page is local, and the script never assigns HTML strings."""
    page = (STATIC / "index.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    script = (STATIC / "console.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "localStorage" not in script  # the key lives in sessionStorage: this tab only
