"""`python -m zyx` runs the `zyx` command line."""
import sys

from zyx.cli import main

sys.exit(main())
