import subprocess
import sys

BLOCKED = [
    "fastapi",
    "starlette",
    "sqlalchemy",
    "alembic",
    "celery",
    "redis",
    "kombu",
    "app.config",
]


def test_engine_imports_nothing_from_web_db_or_queue_layers():
    code = (
        "import sys\n"
        f"for name in {BLOCKED!r}: sys.modules[name] = None\n"
        "import pkgutil, importlib, app.engine\n"
        "for m in pkgutil.iter_modules(app.engine.__path__):\n"
        "    importlib.import_module('app.engine.' + m.name)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
