"""The web console in a real headless Chromium against a real `kilotask serve` and its worker:
sign in, upload SST-2 (a subset), start a SAID job (on a tiny BERT, for time), watch its curves
grow, try the task in the playground (same label and scores as /v1/infer), d90 curve, serving,
keyboard and labels, hostile strings shown as text, nothing fetched from elsewhere, the key never
in a URL."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from tests.browser.conftest import sign_in
from tests.factories import sentiment_rows, write_tsv

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOSTILE = "<img src=x onerror=alert(1)>"
UNLABELLED_CONTROLS = """() => [...document.querySelectorAll('input, select, textarea')]
  .filter(el => el.type !== 'hidden' && !(el.labels && el.labels.length)
                && !el.getAttribute('aria-label'))
  .map(el => el.outerHTML)"""


def _sst2_subset(glue: Path, tmp: Path, name: str, rows: int) -> Path:
    with open(glue / "SST-2" / f"{name}.tsv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        kept = [r for _, r in zip(range(rows), reader, strict=False)]
    return write_tsv(tmp / f"sst2-{name}.tsv", [{"sentence": r["sentence"], "label": r["label"]}
                                                for r in kept])  # fmt: skip


def _series_count(page, selector: str) -> int:
    counts = page.locator(f"{selector} svg").get_attribute("data-count")
    return int(counts or 0)


def _assert_labelled(page, where: str) -> None:
    assert page.evaluate(UNLABELLED_CONTROLS) == [], f"{where}: controls without a label"


def _tab_to(page, name: str, presses: int = 30) -> None:
    """Press Tab until the focused element is the link or button called `name`."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.textContent.trim()") == name:
            return
    raise AssertionError(f"{name!r} not reachable with the Tab key")


@pytest.mark.data
def test_train_watch_and_try_a_task_in_the_browser(page, server, glue_dir, tmp_path, artifacts,
                                                   tiny_bert):  # fmt: skip
    started = time.monotonic()
    sign_in(page, server)
    page.screenshot(path=artifacts / "jobs-empty.png")

    # keyboard only: Tab to the nav link, Enter opens the page
    _tab_to(page, "New job")
    page.keyboard.press("Enter")
    page.wait_for_url("**/#/new")
    _assert_labelled(page, "new job")
    page.get_by_label("Training data (CSV, TSV or JSONL with a header)").set_input_files(
        _sst2_subset(glue_dir, tmp_path, "train", 600)
    )
    page.get_by_label("Evaluation data (optional, same columns)").set_input_files(
        _sst2_subset(glue_dir, tmp_path, "dev", 200)
    )
    page.locator("#text_column option[value=sentence]").wait_for(state="attached")
    page.get_by_label("Text column", exact=True).select_option("sentence")
    page.get_by_label("Label column").select_option("label")
    page.get_by_label("Base model").fill(str(tiny_bert))  # a tiny BERT: seconds, not minutes
    page.get_by_label("Method", exact=True).select_option("said")
    page.get_by_label("Subspace dimension d").fill("1000")
    page.get_by_label("Training steps").fill(
        "600"
    )  # long enough (seconds) to be seen growing on a quiet machine
    page.get_by_label("Batch size").fill("16")
    page.get_by_label("Max length (tokens)").fill("64")
    page.get_by_label("Evaluate every (steps)").fill("150")
    page.screenshot(path=artifacts / "new-job.png")
    page.get_by_role("button", name="Start job").click()

    page.locator("#job-facts").wait_for(timeout=120_000)  # the API loads the base model once
    assert "/#/jobs/job_" in page.url
    job_id = page.url.rsplit("/", 1)[1]
    page.evaluate("() => { window.notReloaded = true; }")
    losses, evals, deadline = [], [], time.monotonic() + 300
    while time.monotonic() < deadline:
        losses.append(_series_count(page, "#loss-chart"))
        evals.append(_series_count(page, "#eval-chart"))
        if page.locator("#job-facts").get_attribute("data-status") == "succeeded":
            break
        if losses[-1] > 40 and len(losses) % 20 == 0:
            page.screenshot(path=artifacts / "job-running.png")
        time.sleep(0.25)
    else:
        job = server.call(f"/v1/jobs/{job_id}")
        raise AssertionError(f"job {job_id} did not succeed in the page: {job}")
    page.locator("#job-task").wait_for()
    page.wait_for_function("() => document.querySelector('#loss-chart svg').dataset.count == 600")
    assert page.evaluate("() => window.notReloaded") is True  # it grew in place, no reload
    grew = sorted(set(losses))
    assert len(grew) >= 4 and losses == sorted(losses), losses  # the curve grew while it ran
    metrics = page.locator("#eval-chart svg polyline").count()  # one line per eval metric
    assert metrics >= 1 and _series_count(page, "#eval-chart") == 4 * metrics, evals
    assert len(set(evals)) >= 2, evals
    page.screenshot(path=artifacts / "job.png")
    job = server.call(f"/v1/jobs/{job_id}")
    print(f"job done at {time.monotonic() - started:.0f}s", job["created_at"], job["started_at"],
          job["finished_at"])  # fmt: skip

    # the task it produced, in the playground: the same answer as /v1/infer
    task_id = page.locator("#job-task").inner_text()
    page.locator("#try-task").click()
    page.locator(f"input[value='{task_id}']:checked").wait_for()
    assert page.url.endswith(f"/#/playground/{task_id}")
    _assert_labelled(page, "playground")
    text = "a gorgeous , witty , seductive movie ."
    page.get_by_label("Text", exact=True).fill(text)
    page.get_by_role("button", name="Run").click()
    card = page.locator(f"section.result[data-task='{task_id}']")
    card.wait_for()
    shown_label = card.locator("strong.label-name").inner_text()
    shown = {c.get_attribute("data-label"): float(c.get_attribute("data-score"))
             for c in card.locator("td.score").all()}  # fmt: skip
    direct = server.call("/v1/infer", {"inputs": [{"task": task_id, "text": text}]})["outputs"][0]
    assert shown_label == direct["label"]
    assert shown.keys() == direct["scores"].keys()
    for label, score in direct["scores"].items():
        assert shown[label] == pytest.approx(score, abs=1e-6)
    page.screenshot(path=artifacts / "playground.png")

    page.get_by_role("link", name="Tasks", exact=True).click()
    row = page.locator(f"tr[data-task='{task_id}']")
    row.wait_for()
    task = server.call(f"/v1/tasks/{task_id}")
    assert str(task["bytes"]) in row.inner_text() and "said" in row.inner_text()
    _assert_labelled(page, "tasks")
    page.screenshot(path=artifacts / "tasks.png")

    page.get_by_role("link", name="Serving").click()
    page.get_by_text("Batches run").wait_for()
    page.wait_for_function("() => document.body.innerText.includes('Mean batch size')")
    page.screenshot(path=artifacts / "serving.png")

    # the jobs page follows a job started elsewhere (over REST) from queued to succeeded in place
    rows = write_tsv(tmp_path / "sentiment.tsv", sentiment_rows(256, seed=1)).read_bytes()
    ds = server.upload("sentiment.tsv", rows)
    other = server.call("/v1/jobs", {"model": str(tiny_bert), "train_dataset": ds,
                                     "eval_dataset": ds, "method": "did", "dim": 100,
                                     "hyperparameters": {"max_steps": 200, "batch_size": 8,
                                                         "max_length": 16}})  # fmt: skip
    page.get_by_role("link", name="Jobs", exact=True).click()
    status = page.locator(f"tr[data-job='{other['id']}'] .badge")
    status.wait_for()
    page.evaluate("() => { window.notReloaded = true; }")
    seen = [status.inner_text()]
    while seen[-1] != "succeeded" and len(seen) < 1200:
        time.sleep(0.25)
        seen.append(status.inner_text())
    assert seen[0] in ("queued", "running") and seen[-1] == "succeeded", seen
    assert page.evaluate("() => window.notReloaded") is True
    assert "accuracy" in page.locator(f"tr[data-job='{other['id']}']").inner_text()
    page.screenshot(path=artifacts / "jobs.png")

    # a d90 search started over REST shows its points as runs finish, the 90 % line, the bracket
    search = server.call("/v1/intrinsic-dimension", {
        "model": str(tiny_bert), "train_dataset": ds, "eval_dataset": ds, "method": "said",
        "min_d": 10, "max_d": 3000, "sweep_points": 3, "lr_grid": [0.3], "full_lr_grid": [1e-2],
        "budget_steps": 16, "batch_size": 16, "max_length": 16})  # fmt: skip
    page.get_by_role("link", name="d90 searches").click()
    page.locator(f"a[href='#/d90/{search['id']}']").click()
    points, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline:
        points.append(_series_count(page, "#d90-chart"))
        if page.locator("#d90-facts").get_attribute("data-status") in ("succeeded", "failed"):
            break
        time.sleep(0.2)
    page.wait_for_timeout(2500)  # the page's last refresh after the end
    final = server.call(f"/v1/intrinsic-dimension/{search['id']}")
    assert final["status"] == "succeeded", final
    results = final["results"]
    assert _series_count(page, "#d90-chart") == len(results["points"]) >= 3
    assert len(set(points)) >= 2, points  # points appeared while it ran
    assert page.locator("#d90-chart line.hline.bar").count() == 1  # the 90 % line, drawn here
    facts = page.locator("#d90-facts").inner_text()
    assert results["d90_text"] in facts
    assert page.locator("#d90-chart rect.band").count() == (1 if results["bracket"] else 0)
    assert ("right" in facts) == (results["censored"] == "right")
    page.screenshot(path=artifacts / "d90.png")
    print(f"d90 done at {time.monotonic() - started:.0f}s")

    # offline and keyless in URLs and logs
    assert all(u.startswith(server.url) or u.startswith(("blob:", "data:")) for u in page.requests)
    assert not any(server.key in u for u in page.requests + page.urls)
    logged = [line for line in server.log.read_text().splitlines() if server.key in line]
    assert all("created an API key" in line for line in logged), logged  # serve's first start
    assert page.dialogs == []


def test_hostile_strings_are_shown_as_text(page, server, tmp_path, artifacts, tiny_bert):
    rows = [{"sentence": f"{HOSTILE} {r['sentence']}", "label": HOSTILE if r["label"] == "1"
             else "<script>alert(2)</script>"} for r in sentiment_rows(64, seed=2)]  # fmt: skip
    hostile_file = write_tsv(tmp_path / "data.tsv", rows)
    sign_in(page, server)
    page.get_by_role("link", name="New job", exact=True).click()
    page.get_by_label("Training data (CSV, TSV or JSONL with a header)").set_input_files(
        {
            "name": f"{HOSTILE}.tsv",
            "mimeType": "text/tab-separated-values",
            "buffer": hostile_file.read_bytes(),
        }  # fmt: skip
    )
    page.get_by_label("Base model").fill("minilm-l6")
    page.get_by_label("Subspace dimension d").fill("0")  # refused: the API's message shows
    page.get_by_role("button", name="Start job").click()
    error = page.locator("#dim-error")
    error.wait_for()
    page.wait_for_function("() => document.querySelector('#dim-error').textContent.length > 0")
    assert "dim" in error.inner_text()
    assert page.locator("#dim").get_attribute("aria-invalid") == "true"
    info = page.locator("#dataset-info")
    assert f"{HOSTILE}.tsv" in info.inner_text()  # the file name, as text
    assert HOSTILE in info.inner_text() and "<script>alert(2)</script>" in info.inner_text()

    # a task trained on it: its labels in the tasks table and the playground, as text
    ds = server.upload("data.tsv", hostile_file.read_bytes())
    job = server.call("/v1/jobs", {"model": str(tiny_bert), "train_dataset": ds, "method": "said",
                                   "dim": 50, "hyperparameters": {"max_steps": 4, "batch_size": 8,
                                                                  "max_length": 16}})  # fmt: skip
    task_id = server.wait_job(job["id"], 120)["task_id"]
    page.get_by_role("link", name="Tasks", exact=True).click()
    page.locator(f"tr[data-task='{task_id}']").wait_for()
    assert HOSTILE in page.locator(f"tr[data-task='{task_id}']").inner_text()
    page.goto(f"{server.url}/#/playground/{task_id}")
    page.get_by_label("Text", exact=True).fill(HOSTILE)
    page.get_by_role("button", name="Run").click()
    page.locator(f"section.result[data-task='{task_id}']").wait_for()
    page.screenshot(path=artifacts / "hostile.png")
    assert page.locator("img").count() == 0 and page.locator("main script").count() == 0
    assert page.evaluate("() => document.querySelectorAll('[onerror]').length") == 0
    assert page.dialogs == []  # nothing ran


def test_the_console_loads_without_a_key_and_shows_nothing(page, server):
    response = page.goto(server.url + "/")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    page.get_by_label("API key").wait_for()
    assert page.get_by_role("navigation").is_hidden()
    page.goto(server.url + "/#/tasks")  # a deep link without a key: still the sign-in form
    page.get_by_label("API key").wait_for()
    assert page.locator("table").count() == 0
    page.get_by_label("API key").fill("kt_not-a-key")
    page.get_by_role("button", name="Sign in").click()
    alert = page.locator("#sign-in-error")
    page.wait_for_function("() => document.querySelector('#sign-in-error').textContent.length")
    assert "not valid" in alert.inner_text()
    assert page.evaluate("() => sessionStorage.getItem('kilotask.key')") is None
    assert page.dialogs == []


def test_a_regression_job_from_the_form_and_its_score_in_the_playground(
    page, server, tmp_path, artifacts, tiny_bert
):
    """A numeric label column: refused without the task type (the message next to the Task
    type field), then trained as regression; the playground shows the score /v1/infer gives."""
    from tests.factories import rating_rows

    ratings = write_tsv(tmp_path / "ratings.tsv", rating_rows(96, seed=4))
    sign_in(page, server)
    page.get_by_role("link", name="New job", exact=True).click()
    page.get_by_label("Training data (CSV, TSV or JSONL with a header)").set_input_files(ratings)
    page.locator("#label_column option[value=score]").wait_for(state="attached")
    page.get_by_label("Label column").select_option("score")
    page.get_by_label("Base model").fill(str(tiny_bert))
    page.get_by_label("Subspace dimension d").fill("200")
    page.get_by_label("Training steps").fill("20")
    page.get_by_label("Max length (tokens)").fill("16")
    page.get_by_role("button", name="Start job").click()
    page.wait_for_function("() => document.querySelector('#task-error').textContent.length > 0")
    assert "regression" in page.locator("#task-error").inner_text()
    assert page.locator("#task").get_attribute("aria-invalid") == "true"
    assert "distinct label values" in page.locator("#dataset-info").inner_text()

    page.get_by_label("Task type").select_option("regression")
    page.get_by_role("button", name="Start job").click()
    page.locator("#job-facts").wait_for(timeout=120_000)
    job_id = page.url.rsplit("/", 1)[1]
    job = server.wait_job(job_id, 120)
    assert job["task"] == "regression" and job["status"] == "succeeded", job
    page.goto(f"{server.url}/#/playground/{job['task_id']}")
    page.locator(f"input[value='{job['task_id']}']:checked").wait_for()
    page.get_by_label("Text", exact=True).fill("good great nice movie")
    page.get_by_role("button", name="Run").click()
    card = page.locator(f"section.result[data-task='{job['task_id']}']")
    card.wait_for()
    shown = float(card.locator("strong.score").get_attribute("data-score"))
    direct = server.call(
        "/v1/infer", {"inputs": [{"task": job["task_id"], "text": "good great nice movie"}]}
    )["outputs"][0]
    assert shown == direct["score"] and "label" not in direct
    page.screenshot(path=artifacts / "regression.png")
