"""``python -m kling_async``: the same as the ``kling-async`` command."""

import sys

from .cli import main

sys.exit(main())
