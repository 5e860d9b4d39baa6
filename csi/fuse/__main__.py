"""`python -m csi.fuse`: the per-volume mount daemon (see csi/fuse/daemon.py)."""

import sys

from .daemon import main

sys.exit(main())
