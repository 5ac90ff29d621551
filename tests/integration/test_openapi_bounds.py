"""The OpenAPI document says what the server does (issue 23): every bound it documents on a
parameter or body field (minimum, maximum, lengths, item counts) is sent to the live app at the
bound and one past it. Past it must be a 422 `validation_error` naming that field; at it (with
any field bound to it set to fit, see COMPANIONS), the request must get past validation (it may
still be refused later, for what the schema cannot say: a model that does not load, an id that
does not exist, a full job queue). An operation with bounds and no baseline request below fails
the test, so a new route cannot slip by.

The bounds no single field can state (batch_size x max_length; characters per /v1/infer call)
are in the fields' descriptions; those are checked at and past their documented number too."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.integration.test_d90_api import search_body
from tests.integration.test_jobs_api import body, make_task_bytes

pytestmark = pytest.mark.integration

BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
          "minLength", "maxLength", "minItems", "maxItems")  # fmt: skip
ITEM = {"targets": "query"}  # an element for list fields that the baselines leave out
# Fields bound to each other (min_d < max_d): at one's bound, the other takes a value that fits.
COMPANIONS = {
    ("POST /v1/intrinsic-dimension", "min_d", "maximum"): ("max_d", 2**31 - 1),
    ("POST /v1/intrinsic-dimension", "max_d", "minimum"): ("min_d", 1),
}


@dataclass
class Call:
    """One request: where each value goes, as the OpenAPI document names the places."""

    method: str
    route: str
    path: dict[str, str] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    header: dict[str, str] = field(default_factory=dict)
    json: dict | None = None
    form: dict[str, str] | None = None
    files: dict | None = None

    def send(self, client, auth):
        url = self.route.format(**self.path)
        kwargs: dict[str, Any] = {"params": self.query, "headers": {**auth, **self.header}}
        if self.json is not None:
            kwargs["json"] = self.json
        if self.files is not None:
            kwargs["files"] = self.files
            kwargs["data"] = self.form or {}
        return client.request(self.method, url, **kwargs)


def baselines(tiny_bert, ids: dict[str, str]) -> dict[str, Call]:
    """A request per bounded operation that passes validation as it stands."""
    dataset, job, task = ids["dataset"], ids["job"], ids["task"]
    upload = {"file": ("d.tsv", b"sentence\tlabel\nnice\t1\nbad\t0\n")}
    calls = [
        Call("POST", "/v1/datasets", files=upload, form={}),
        Call(
            "POST",
            "/v1/jobs",
            json=dict(
                body(tiny_bert, dataset), hyperparameters={"max_length": 16, "batch_size": 16}
            ),
        ),  # fmt: skip
        Call("POST", "/v1/intrinsic-dimension", json=search_body(tiny_bert, dataset)),
        Call("POST", "/v1/infer", json={"inputs": [{"task": task, "text": "nice"}]}),
        Call("GET", "/v1/tasks/{task_id}/predict", path={"task_id": task}, query={"text": "a"}),
    ]
    by_name = {f"{c.method} {c.route}": c for c in calls}
    for route, name, value in (("/v1/datasets", "dataset_id", dataset),
                               ("/v1/jobs", "job_id", job), ("/v1/tasks", "task_id", task),
                               ("/v1/intrinsic-dimension", "job_id", job)):  # fmt: skip
        by_name.setdefault(f"GET {route}", Call("GET", route))
        for suffix, methods in (("", "GET DELETE"), ("/events", "GET"), ("/cancel", "POST"),
                                ("/vector", "GET"), ("/pin", "POST DELETE"),
                                ("/curve.png", "GET"), ("/export", "GET")):  # fmt: skip
            for method in methods.split():
                query = {"format": "peft"} if suffix == "/export" else {}
                full = f"{route}/{{{name}}}{suffix}"
                by_name[f"{method} {full}"] = Call(method, full, path={name: value}, query=query)
    return by_name


def bounded_leaves(doc: dict, schema: dict, where: list) -> list[tuple[list, str, Any, dict]]:
    """(path to the value, bound, its number, the schema) for every bound under `schema`."""
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    found = [(where, b, schema[b], schema) for b in BOUNDS if b in schema]
    for alternative in schema.get("anyOf", []) + schema.get("allOf", []):
        found += bounded_leaves(doc, alternative, where)
    for name, sub in schema.get("properties", {}).items():
        found += bounded_leaves(doc, sub, [*where, name])
    if "items" in schema:
        found += bounded_leaves(doc, schema["items"], [*where, 0])
    return found


def edge(bound: str, limit, schema: dict, like) -> tuple[Any, Any]:
    """(a value at the bound, a value just past it)."""
    integer = schema.get("type") == "integer"
    step = 1 if integer else max(abs(limit), 1) * 1e-3
    if bound == "minimum":
        return limit, limit - step
    if bound == "maximum":
        return limit, limit + step
    if bound == "exclusiveMinimum":
        return limit + step, limit
    if bound == "exclusiveMaximum":
        return limit - step, limit
    if bound in ("minLength", "maxLength"):
        sizes = (limit, limit - 1 if bound == "minLength" else limit + 1)
        return tuple("a" * n for n in sizes)
    sizes = (limit, limit - 1 if bound == "minItems" else limit + 1)
    return tuple([copy.deepcopy(like)] * n for n in sizes)


def with_value(call: Call, where: list, value) -> Call:
    """`call` with the value at `where` (["query", "limit"], ["body:…", "inputs", 0, "text"])."""
    out = copy.deepcopy(call)
    place, *rest = where
    if place.startswith("body:"):
        target = out.form if place == "body:multipart/form-data" else out.json
        for key in rest[:-1]:
            target = target.setdefault(key, {}) if isinstance(key, str) else target[key]
        target[rest[-1]] = value
    else:
        getattr(out, place)[rest[0]] = value
    return out


def element_of(call: Call, where: list):
    """An element for a list field: the baseline's first one, or ITEM's."""
    place, *rest = where
    value = call.json
    for key in rest:
        value = value.get(key) if isinstance(value, dict) else None
    return value[0] if value else ITEM[rest[-1]]


def loc_of(where: list) -> str:
    """The field as the API's validation messages name it (see app/api/errors.py)."""
    place, *rest = where
    prefix = [] if place.startswith("body:") else [place]
    return ".".join(str(p) for p in prefix + rest)


def refused_for(r, loc: str) -> bool:
    if r.status_code != 422 or r.json()["error"]["code"] != "validation_error":
        return False
    parts = r.json()["error"]["message"].split("; ")
    return any(re.match(rf"{re.escape(loc)}[.:]", part) for part in parts)


@pytest.fixture()
def ids(client, auth, dataset, tiny_bert) -> dict[str, str]:
    task = client.post("/v1/tasks", files={"file": ("t.safetensors", make_task_bytes(tiny_bert))},
                       headers=auth).json()["id"]  # fmt: skip
    job = client.post("/v1/jobs", json=body(tiny_bert, dataset), headers=auth).json()["id"]
    return {"dataset": dataset, "job": job, "task": task}


def test_every_documented_bound_is_the_one_the_server_enforces(client, auth, tiny_bert, ids):
    doc = client.get("/openapi.json").json()
    calls = baselines(tiny_bert, ids)
    checked, missing, wrong = 0, [], []
    for route, operations in doc["paths"].items():
        for method, op in operations.items():
            leaves = []
            for p in op.get("parameters", []):
                leaves += bounded_leaves(doc, p["schema"], [p["in"], p["name"]])
            for media, content in op.get("requestBody", {}).get("content", {}).items():
                leaves += bounded_leaves(doc, content["schema"], [f"body:{media}"])
            # an empty path segment names another route: nothing to check there
            leaves = [x for x in leaves if not (x[0][0] == "path" and x[1] == "minLength")]
            if not leaves:
                continue
            name = f"{method.upper()} {route}"
            if name not in calls:
                missing.append(name)
                continue
            for where, bound, limit, schema in leaves:
                like = element_of(calls[name], where) if bound.endswith("Items") else None
                at, past = edge(bound, limit, schema, like)
                loc = loc_of(where)
                if not refused_for(with_value(calls[name], where, past).send(client, auth), loc):
                    wrong.append(f"{name} {loc} {bound}={limit}: {past!r:.40} was not refused")
                call = calls[name]
                if (name, loc, bound) in COMPANIONS:
                    other, value = COMPANIONS[name, loc, bound]
                    call = with_value(call, [where[0], other], value)
                r = with_value(call, where, at).send(client, auth)
                if r.status_code == 422 and r.json()["error"]["code"] == "validation_error":
                    wrong.append(f"{name} {loc} {bound}={limit}: {at!r:.40} refused: {r.text}")
                checked += 1
    assert not missing, f"bounded operations without a baseline request here: {missing}"
    assert not wrong, "\n".join(wrong)
    assert checked >= 80  # the walk found the bounds (83 when written)


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/intrinsic-dimension"])
def test_the_documented_tokens_per_step_bound_holds(client, auth, dataset, tiny_bert, route):
    from app.schemas.jobs import MAX_BATCH_TOKENS

    doc = client.get("/openapi.json").json()
    described = re.findall(r"at most ([\d,]+) tokens", str(doc["components"]["schemas"]))
    assert {int(n.replace(",", "")) for n in described} == {MAX_BATCH_TOKENS}
    make = body if route == "/v1/jobs" else search_body
    for batch, fine in ((MAX_BATCH_TOKENS // 512, True), (MAX_BATCH_TOKENS // 512 + 1, False)):
        sizes = {"batch_size": batch, "max_length": 512}
        request = make(tiny_bert, dataset, **({"hyperparameters": sizes} if make is body
                                              else sizes))  # fmt: skip
        r = client.post(route, json=request, headers=auth)
        said_no = r.status_code == 422 and f"at most {MAX_BATCH_TOKENS:,}" in r.text
        assert said_no is not fine, r.text


def test_the_documented_characters_per_call_bound_holds(client, auth, ids):
    from app.schemas.infer import MAX_CALL_TEXT, MAX_TEXT

    doc = client.get("/openapi.json").json()
    assert f"{MAX_CALL_TEXT:,} characters in all" in str(doc["components"]["schemas"])
    n = MAX_CALL_TEXT // MAX_TEXT
    for count, fine in ((n, True), (n + 1, False)):
        inputs = [{"task": ids["task"], "text": "nice " * (MAX_TEXT // 5)}] * count
        r = client.post("/v1/infer", json={"inputs": inputs}, headers=auth)
        assert (r.status_code == 200) is fine and (r.status_code == 422) is not fine, r.text[:300]
