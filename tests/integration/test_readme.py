"""The README's service examples, run as written (issue 23): the key commands of "The service"
and the whole curl walk-through, then "Predict and inspect" on the task file the walk-through
downloaded, against `kilotask serve` on loopback with the real MiniLM-L6 and GLUE data.

The README writes ids as placeholders (`ds_…`, `job_…`, `task_…`, `kt_…`); the test fills each
in with the id the commands before it returned, as a reader would. Without a worker the
walk-through's job stays queued (and is cancelled by it), so the task it reads, serves, pins and
exports is one imported first, as a finished job would have left it (`task_…(MRPC)` is a
sentence-pair one). The `train` and `d90` examples are left out: they train for minutes.
Each command must succeed (curl: a 2xx; kilotask: exit 0), and each `# -> …` shown after it
must hold: its status, every key it names, every whole number it shows."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import GLUE
from tests.integration.services import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CURL = "curl() { command curl -sS -w '\\n%{http_code}' \"$@\"; }; "


def block_after(text: str, marker: str) -> str:
    """The first ```bash block after `marker` in the README."""
    start = text.index("```bash", text.index(marker)) + len("```bash")
    return text[start : text.index("```", start)]


def commands(block: str) -> list[tuple[str, str]]:
    """(command, what its `# ->` comment shows) for each shell command of a block: physical
    lines joined until the quotes close and no line ends in a backslash."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in block.strip("\n").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            shown = re.match(r"#\s*->\s*(.*)", stripped)
            if shown and out:
                out[-1] = (out[-1][0], (out[-1][1] + " " + shown.group(1)).strip())
            continue
        pending += line + "\n"
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if pending.rstrip().endswith("\\"):
            continue
        inline = re.search(r"\s#\s*->\s*(.*)$", pending.rstrip())
        out.append((pending.strip(), inline.group(1) if inline else ""))
        pending = ""
    return out


def keys_of(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_of(v)}
    return set()


def values_of(value, key: str) -> list:
    if isinstance(value, dict):
        found = [value[key]] if key in value else []
        return found + [x for v in value.values() for x in values_of(v, key)]
    if isinstance(value, list):
        return [x for v in value for x in values_of(v, key)]
    return []


def check_shown(shown: str, status: int | None, body: str) -> None:
    """What the README shows after `->`: a status, keys, whole numbers (texts and fractions are
    examples of the shape, not of the values)."""
    code = re.match(r"(\d{3})\b", shown)
    if code:
        assert status == int(code.group(1)), (shown, status)
    data = json.loads(body.strip().splitlines()[-1] if body.strip() else "null")
    for key in re.findall(r'"([^"]+)":', shown):
        assert key in keys_of(data), (key, shown, body[:300])
    for key, number in re.findall(r'"([^"]+)":\s*(\d+)\b(?![.\d])', shown):
        assert int(number) in values_of(data, key), (key, number, body[:300])


@pytest.fixture()
def served(tmp_path):
    """`kilotask serve --no-worker` on a free port, its data folder, and the key it made."""
    data = tmp_path / "data"
    port = free_port()
    env = dict(os.environ, KILOTASK_DATA_DIR=str(data), HF_HUB_OFFLINE="1")
    for name in ("KILOTASK_DATABASE_URL", "KILOTASK_BROKER_URL"):
        env.pop(name, None)
    command = [str(BIN / "kilotask"), "serve", "--no-worker", "--port", str(port)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(command, env=env, **quiet)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    yield url, data, env
    proc.terminate()
    proc.wait(timeout=60)


def import_task(url: str, key: str, artifact) -> str:
    import httpx

    r = httpx.post(f"{url}/v1/tasks", files={"file": ("t.safetensors", artifact.to_bytes())},
                   headers={"Authorization": f"Bearer {key}"}, timeout=60)  # fmt: skip
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason="needs ../shared/data/glue")
def test_the_readme_examples_run_as_written(served, tmp_path):
    from tests.factories import make_lowrank_task

    url, data, env = served
    readme = (REPO / "README.md").read_text()
    key = (data / "api_key").read_text().strip()
    ids = {
        "task_…(MRPC)": import_task(url, key, make_lowrank_task(
            "minilm-l6", text_column="#1 String", text_pair_column="#2 String")),
        "task_…": import_task(url, key, make_lowrank_task("minilm-l6")),
        "kt_…": key,
    }  # fmt: skip
    env = dict(env, PATH=f"{BIN}:{env['PATH']}")
    made = subprocess.run([str(BIN / "kilotask"), "keys", "create", "--tenant", "other"], env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    env["OTHER_KEY"] = json.loads(made.stdout)["api_key"]  # the walk-through's second tenant

    def run(command: str, prelude: str = "") -> tuple[int | None, str]:
        for placeholder, value in ids.items():  # the longest first: task_…(MRPC) before task_…
            command = command.replace(placeholder, value)
        command = (command.replace(".venv/bin/", f"{BIN}/")
                   .replace("../shared/data/glue", str(GLUE)))  # fmt: skip
        done = subprocess.run(["bash", "-c", CURL + prelude + command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, (command, done.stdout[-500:], done.stderr[-500:])
        if not command.lstrip().startswith("curl"):
            return None, done.stdout
        body, _, status = done.stdout.rstrip("\n").rpartition("\n")
        assert status.isdigit() and 200 <= int(status) < 300, (command, done.stdout[-500:])
        return int(status), body

    ran = 0
    for command, _ in commands(block_after(readme, "## The service")):
        if " serve" in command or " worker" in command:
            continue  # the server under test; a worker runs until stopped
        if "keys revoke" in command:
            listed = [json.loads(line) for line in run(command.split("#")[0].replace(
                "revoke key_…", "list --tenant acme"))[1].splitlines()]  # fmt: skip
            ids["key_…"] = listed[0]["id"]
        run(command.replace("[--tenant acme]", "--tenant acme"))
        ran += 1

    prelude = ""
    for command, shown in commands(block_after(readme, "A walk-through with curl")):
        if command.startswith("API="):
            prelude = command.replace("http://127.0.0.1:8000", url).replace(
                "~/.kilotask", str(data)) + "; "  # fmt: skip
            continue
        status, body = run(command, prelude)
        if shown:
            check_shown(shown, status, body)
        for made in re.findall(r'"id":\s*"((?:ds|job)_[0-9a-f]+)"', body or "")[:1]:
            ids.setdefault("ds_…", made) if made.startswith("ds_") else ids.update({"job_…": made})
        ran += 1
    assert (tmp_path / "sst2.safetensors").stat().st_size > 0

    for command, _ in commands(block_after(readme, "### Predict and inspect")):
        run(command)
        ran += 1
    assert ran >= 26  # every command above was found (26 when written)
