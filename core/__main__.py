"""`python -m core`: the MatchLab command line (see core/cli.py)."""

import os
import sys

from core.cli import main

if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "torch.distributed" in sys.modules:
        # A torchrun rank that got here has finished its work and destroyed its process group
        # (distributed.shutdown). It skips interpreter finalisation: gloo's worker threads can still hold
        # tensors then, and freeing them while Python tears down aborts the process (SIGABRT, "terminate
        # called without an active exception"; seen once under load in tests/test_distributed.py; pytorch
        # PR 179291 describes the cause). Everything the command wrote was written atomically before this.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
