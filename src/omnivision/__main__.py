"""`python -m omnivision` runs the command line."""

import sys

from omnivision.cli.main import main

sys.exit(main())
