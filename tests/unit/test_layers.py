"""The layer rules of pyproject.toml's [tool.importlinter] hold: the engine imports no service
layer, serving no job runtime, the API no worker, and no part imports another in a loop. Imports
made inside functions count too (they are how the CLI keeps `--help` free of torch)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_import_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    proc = subprocess.run(
        [lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout
