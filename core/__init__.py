"""MatchLab core: train and evaluate image models for classification and verification.

Entry point for people: `python -m core --help`. Entry points for code: `core.train.fit`,
`core.evaluate.evaluate_run`, `core.models.create_model`. Importable without Streamlit or umap-learn.
"""

import os as _os

# OpenMP threads that finish a parallel region early spin by default, waiting for the others. On a machine
# whose cores are shared (CI, a laptop running a browser, the dashboard's server) the spinning thread takes
# the core its lagging sibling needs: tests/test_models.py took 228 s with one of 2 cores kept busy and
# 73 s with passive waiting, and training / inference images/s were equal or better with it
# (docs/performance.md). libgomp reads this once, when torch or scikit-learn first loads it, so it is set
# on importing core; a value the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
