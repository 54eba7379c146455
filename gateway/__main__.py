"""`python -m gateway` runs the `gateway` command."""

import sys

from .cli import main

sys.exit(main())
