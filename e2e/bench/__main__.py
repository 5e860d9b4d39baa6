import sys

from .run import Interrupted, main

try:
    sys.exit(main())
except (KeyboardInterrupt, Interrupted):
    print("\ninterrupted: every mount, process and temp dir the bench made is removed",
          file=sys.stderr)
    sys.exit(130)
