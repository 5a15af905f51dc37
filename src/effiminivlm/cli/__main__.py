"""`python -m effiminivlm.cli ...` (torchrun launches training this way)."""

import sys

from effiminivlm.cli import main

sys.exit(main())
