"""`python -m vmledger`: the `vmledger` command."""

import sys

from vmledger.cli import main

sys.exit(main())
