"""``python -m splitft.cli``: the same as the ``splitft`` command."""

import sys

from splitft.cli import main

sys.exit(main())
