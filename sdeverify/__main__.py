"""``python -m sdeverify …`` works like the ``sdeverify`` command."""
import sys

from .cli import main

sys.exit(main())
