"""`python -m llb` runs the command line."""

import sys

from llb.cli import main

sys.exit(main())
