"""`python -m barmaid`: the same as the `barmaid` command."""

import sys

from .cli import main

sys.exit(main())
