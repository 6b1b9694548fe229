"""`python -m imageretrieval`: the command line, as the `imageretrieval` script."""

import sys

from imageretrieval.cli import main

sys.exit(main())
