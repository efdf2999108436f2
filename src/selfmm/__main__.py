"""`python -m selfmm` (and `torchrun -m selfmm`) run the command line."""

import sys

from .cli import main

sys.exit(main())
