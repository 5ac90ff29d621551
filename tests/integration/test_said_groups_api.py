"""SAID's grouping over REST: `said_groups` on jobs and searches (SAID only), in the task's
metadata, and m by grouping; `precision` as a hyperparameter. The tiny BERT has 2 layers: m is
4 by layer (embeddings, 2 layers, the rest) and one per tensor otherwise."""

from __future__ import annotations

import torch

from app.engine.base import load_base
from tests.factories import make_task
from tests.integration.test_d90_api import search_body
from tests.integration.test_jobs_api import body


def test_jobs_take_said_groups_for_said_only(client, auth, dataset, tiny_bert):
    r = client.post("/v1/jobs", json=body(tiny_bert, dataset, said_groups="tensor"), headers=auth)
    assert r.status_code == 202, r.text
    assert r.json()["options"] == {"said_groups": "tensor"}
    did = client.post("/v1/jobs", json=body(tiny_bert, dataset, method="did", said_groups="layer"),
                      headers=auth)  # fmt: skip
    assert did.status_code == 422 and did.json()["error"]["code"] == "invalid_options", did.text
    bad = client.post("/v1/jobs", json=body(tiny_bert, dataset, said_groups="row"), headers=auth)
    assert bad.status_code == 422
    hp = {"max_length": 16, "precision": "bf16"}
    bf16 = client.post("/v1/jobs", json=body(tiny_bert, dataset, hyperparameters=hp), headers=auth)
    assert bf16.status_code == 202 and bf16.json()["hyperparameters"]["precision"] == "bf16"


def test_a_search_range_follows_the_grouping(client, auth, dataset, tiny_bert):
    narrow = {"min_d": 1, "max_d": 20}
    by_layer = client.post("/v1/intrinsic-dimension", headers=auth,
                           json=search_body(tiny_bert, dataset, **narrow))  # fmt: skip
    assert by_layer.status_code == 202, by_layer.text  # d from 5 to 20: m is 4 by layer
    tensor = search_body(tiny_bert, dataset, said_groups="tensor", **narrow)
    by_tensor = client.post("/v1/intrinsic-dimension", headers=auth, json=tensor)
    assert by_tensor.status_code == 422 and "no d to search" in by_tensor.text


def test_a_task_states_its_grouping(client, auth, tiny_bert):
    base = load_base(str(tiny_bert), 2, 0)
    layer = make_task(str(tiny_bert), base, dim=60, said_groups="layer", theta=torch.randn(56),
                      lam=torch.ones(4))  # fmt: skip
    old = make_task(str(tiny_bert), base, dim=100)  # no grouping key: a file from before
    for artifact, grouping in ((layer, "layer"), (old, "tensor")):
        files = {"file": ("t.safetensors", artifact.to_bytes())}
        r = client.post("/v1/tasks", files=files, headers=auth)
        assert r.status_code == 201, r.text
        assert r.json()["said_groups"] == grouping
