"""Schemathesis against the app's own OpenAPI document, in process, with every check on: no
5xx, every status and body as documented, bad input refused with 4xx, good input accepted, 401
without the key, 405 with Allow for undocumented methods. Bounded to fit CI's 2 cores.

Positive (schema-valid) requests may still be refused where the server checks what a schema
cannot say: whether a model or a dataset exists, whether a dim fits the model, whether an upload
parses. Those operations (CONTENT_CHECKED) also accept 400/413/422 as answers to valid input;
no check is turned off.

KILOTASK_FUZZ_SEED, _EXAMPLES and _SEQUENCES explore further than CI does."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis.config import SchemathesisConfig

from app.main import create_app
from tests.factories import make_lowrank_task, sentiment_rows
from tests.integration.conftest import new_key
from tests.integration.test_api_basics import tsv
from tests.integration.test_d90_api import search_body
from tests.integration.test_jobs_api import body, make_task_bytes

pytestmark = pytest.mark.integration

# Hypothesis caches (unicode tables, source constants: read at collection) go to a temporary
# folder rather than ./.hypothesis, like everything else the fuzz writes.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "kilotask-hypothesis")

MAX_EXAMPLES = int(os.environ.get("KILOTASK_FUZZ_EXAMPLES", "25"))  # random cases per operation
STATEFUL_EXAMPLES = int(os.environ.get("KILOTASK_FUZZ_SEQUENCES", "30"))  # up to 10 calls each
SEED = int(os.environ.get("KILOTASK_FUZZ_SEED", "20261203"))

# Input the schema cannot fully describe (a model that loads, a file that parses, a d that
# fits the model, a text_pair only for pair tasks, a LoRA export only of a lowrank task): valid
# per schema, refused after a look at the content.
SERVED = ["2xx", "401", "404", "422", "429", "503"]
CONTENT_CHECKED = {
    "POST /v1/infer": SERVED,
    "GET /v1/tasks/{task_id}/predict": SERVED,
    "GET /v1/tasks/{task_id}/export": SERVED,
    "POST /v1/jobs": SERVED,
    "POST /v1/intrinsic-dimension": ["2xx", "401", "404", "409", "422", "429", "503"],
    "POST /v1/datasets": ["2xx", "400", "401", "413", "422", "503"],
    "POST /v1/tasks": ["2xx", "400", "401", "413", "422", "503"],
    "POST /v1/tasks:batch": ["2xx", "400", "401", "413", "422", "503"],
}


def real(dictionary: str, probability: float = 0.5) -> dict:
    return {"dictionary": dictionary, "probability": probability}


def fuzz_config(api_key: str, ids: dict[str, list[str]]) -> SchemathesisConfig:
    """Ids and the model are drawn from real ones half of the time, so valid requests reach
    the code past the 404 (jobs queued, tasks served, exported, pinned, deleted)."""
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "auth": {"openapi": {"bearerAuth": {"bearer": api_key}}},
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            "phases": {"stateful": {"inference": {"algorithms": ["dependency-analysis"]}}},
            "dictionaries": {name: {"values": values} for name, values in ids.items()},
            "parameters": {
                "path.dataset_id": real("datasets"),
                "body.train_dataset": real("datasets", 0.8),
                "body.eval_dataset": real("datasets", 0.8),
                "path.job_id": real("jobs"),
                "body.reuse_from": real("jobs"),
                "path.task_id": real("tasks"),
                "body.inputs[*].task": real("tasks", 0.8),
                "body.model": real("models", 0.8),
            },
            "operations": [
                {
                    "include-name": name,
                    "checks": {"positive_data_acceptance": {"expected-statuses": statuses}},
                }
                for name, statuses in CONTENT_CHECKED.items()
            ]
            + [  # deleting the served task would leave pin and predict only 404s
                {
                    "include-name": "DELETE /v1/tasks/{task_id}",
                    "parameters": {"path.task_id": real("doomed_tasks")},
                }
            ],
        }
    )


def new_tenant(client: TestClient, settings, tiny_bert, blobs: list[bytes]) -> dict:
    """A new tenant with a dataset, a queued job and d90 search, and the tasks in `blobs`;
    returns its auth header and the ids, by kind."""
    auth = new_key(settings)

    def created(r) -> str:
        assert r.status_code in (201, 202), r.text
        return r.json()["id"]

    files = {"file": ("d.tsv", tsv(sentiment_rows(20)), "text/plain")}
    ds = created(client.post("/v1/datasets", files=files, headers=auth))
    job = created(client.post("/v1/jobs", json=body(tiny_bert, ds), headers=auth))
    search_json = search_body(tiny_bert, ds)
    search = created(client.post("/v1/intrinsic-dimension", json=search_json, headers=auth))
    tasks = [
        created(client.post("/v1/tasks", files={"file": ("t.safetensors", blob)}, headers=auth))
        for blob in blobs
    ]
    return {"auth": auth, "datasets": [ds], "jobs": [job, search], "tasks": tasks}


@pytest.fixture()
def fuzz_app(settings, tiny_bert):
    """The app on this backend with the tiny BERT as default model (a job body without a model
    loads in milliseconds), and a way to make tenants with real resources: a SAID task, a
    lowrank task, and one more for DELETE to remove."""
    settings = settings.model_copy(update={"default_model": str(tiny_bert)})
    app = create_app(settings)
    blobs = [
        make_task_bytes(tiny_bert, seed=1),
        make_lowrank_task(str(tiny_bert)).to_bytes(),
        make_task_bytes(tiny_bert, seed=2),
    ]
    client = TestClient(app)
    return app, lambda: new_tenant(client, settings, tiny_bert, blobs)


@pytest.fixture()
def api_schema(fuzz_app, tiny_bert):
    app, make_tenant = fuzz_app
    tenant = make_tenant()
    ids = {
        "datasets": tenant["datasets"],
        "jobs": tenant["jobs"],
        "tasks": tenant["tasks"][:2],
        "doomed_tasks": tenant["tasks"][2:],
        "models": [str(tiny_bert)],
    }
    key = tenant["auth"]["Authorization"].split()[1]
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=fuzz_config(key, ids))


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    """schemathesis' lazy schema reads and renames `node._nodeid`, which pytest 9 no longer
    has; giving it one keeps the per-operation subtests working."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_operation_answers_as_documented(case):
    """Per operation: the examples, the coverage phase (boundaries, each field made invalid,
    missing key, undocumented methods) and MAX_EXAMPLES random cases."""
    case.call_and_validate()


def test_sequences_of_calls_answer_as_documented(api_schema, fuzz_app):
    """Calls chained through the ids they return (links inferred from the schema, e.g. GET
    /v1/tasks, then that task's vector, predict, DELETE): a created resource can be read, a
    deleted one is gone, and every answer is documented. Each sequence runs as a new tenant
    with the same resources, so Hypothesis finds the same state when it replays one."""
    _, make_tenant = fuzz_app

    class Sequences(api_schema.as_state_machine()):
        def setup(self) -> None:
            self.auth = make_tenant()["auth"]

        def get_call_kwargs(self, case) -> dict:
            return {"headers": dict(self.auth)}

    machine = hypothesis.seed(SEED)(Sequences)
    machine.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=10,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )
