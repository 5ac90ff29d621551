"""docker-compose.yml cannot run here (no Docker engine), so check that it stays consistent
with what the app reads."""

from pathlib import Path

import yaml

from app.config import Settings
from app.jobs.queue import TRAIN_TASK, Queue

ROOT = Path(__file__).resolve().parents[2]


def test_compose_sets_only_settings_the_app_reads():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert {"api", "worker", "redis", "postgres", "migrate"} <= compose["services"].keys()
    env = compose["x-kilotask-env"]
    fields = {f"KILOTASK_{name.upper()}" for name in Settings.model_fields}
    kilotask_vars = {k for k in env if k.startswith("KILOTASK_")}
    assert kilotask_vars <= fields, kilotask_vars - fields
    assert env["KILOTASK_BROKER_URL"].startswith("redis://")
    assert env["KILOTASK_DATABASE_URL"].startswith("postgresql")
    worker = compose["services"]["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_every_queued_task_name_is_registered_by_the_worker():
    from workers.celery_app import app

    app.loader.import_default_modules()
    assert TRAIN_TASK in app.tasks
    assert app.conf.task_routes[TRAIN_TASK]["queue"] == Queue.GPU
    assert app.conf.task_acks_late and app.conf.worker_prefetch_multiplier == 1


def test_queueing_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, app.jobs.queue, app.api.routes.jobs\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_the_load_balancer_config_is_valid_and_used_by_compose():
    """deploy/haproxy.cfg parses with Debian's HAProxy (`haproxy -c`), health-checks /healthz,
    and docker-compose.yml mounts it in front of the api replicas."""
    import shutil
    import subprocess

    import pytest

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    lb = compose["services"]["lb"]
    assert any(v.startswith("./deploy/haproxy.cfg:") for v in lb["volumes"])
    assert "ports" not in compose["services"]["api"]  # reached through the load balancer only
    text = (ROOT / "deploy" / "haproxy.cfg").read_text()
    assert "option httpchk GET /healthz" in text and "server-template api" in text
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed (scripts/setup.sh installs it with apt-get)")
    check = subprocess.run(["haproxy", "-c", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
