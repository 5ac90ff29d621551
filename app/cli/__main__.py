"""`python -m app.cli …`: how `serve` starts its local worker."""

import sys

from app.cli.main import main

sys.exit(main())
