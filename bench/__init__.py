"""MatchLab's benchmark harness: `python -m bench.run` (see bench/README.md).

Times MatchLab's training loop, embedding extraction, decode-once cache, ROC metrics and 1:N search
against the pipeline people write by hand, in one process on the same model and data, and writes each
figure with the hardware, versions and exact command beside it (bench/results/).
"""
