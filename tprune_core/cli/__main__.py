"""`python -m tprune_core.cli ...`: the `tprune` command without the installed entry point."""
import sys

from . import main

sys.exit(main())
