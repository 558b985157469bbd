"""`python -m matchlab`: the same as the `matchlab` console script."""

import sys

from matchlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
