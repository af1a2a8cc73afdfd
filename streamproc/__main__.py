"""``python -m streamproc``: the CLI, independent of where pip put the console script."""

import sys

from streamproc.cli import main

sys.exit(main())
