"""The README's console screenshots (docs/console-job.png, docs/console-playground.png): a
MiniLM-L6 lowrank d=1000 job on 4,000 SST-2 rows (200 steps), watched in the console of a fresh
`kilotask serve` on embedded defaults, then its task in the playground. About 14 minutes on two
busy CPU cores.

    .venv/bin/python scripts/console_screenshots.py [OUT_DIR]   # default /tmp/console-shots
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.browser import conftest as c  # noqa: E402
from tests.browser.test_console import _sst2_subset  # noqa: E402

GLUE = Path(os.environ.get("GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))
JOB = {"model": "minilm-l6", "method": "lowrank", "dim": 1000,
       "hyperparameters": {"max_steps": 200, "batch_size": 32, "max_length": 64,
                           "eval_every": 25, "learning_rate": 0.2}}  # fmt: skip


def shoot(server: c.Server, out: Path) -> None:
    url = server.url
    train = server.upload("sst2-train.tsv", _sst2_subset(GLUE, out, "train", 4000).read_bytes())
    dev = server.upload("sst2-dev.tsv", _sst2_subset(GLUE, out, "dev", 872).read_bytes())
    job = server.call("/v1/jobs", JOB | {"train_dataset": train, "eval_dataset": dev})
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=c.CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url + "/")
        page.get_by_label("API key").fill(server.key)
        page.get_by_label("API key").press("Enter")
        page.get_by_role("navigation").wait_for()
        page.goto(f"{url}/#/jobs/{job['id']}")
        task_id = server.wait_job(job["id"], 3600)["task_id"]
        time.sleep(3)  # the page's last refresh
        page.screenshot(path=out / "job.png")
        page.goto(f"{url}/#/playground/{task_id}")
        page.get_by_label("Text", exact=True).fill("a gorgeous, witty, seductive movie.")
        page.get_by_role("button", name="Run").click()
        page.locator("section.result").wait_for()
        page.screenshot(path=out / "playground.png")
    print(json.dumps(server.call(f"/v1/jobs/{job['id']}")["metrics"]))


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/console-shots")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with c.serving(out, timeout=200) as server:
        shoot(server, out)


if __name__ == "__main__":
    main()
