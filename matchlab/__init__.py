"""MatchLab's installed entry point: the `matchlab` console script.

A wheel installs one top-level import name, `matchlab`, holding `core/` and `dashboard/` as sub-folders, so a
user's own package called `core` is never shadowed. `matchlab.cli.main` puts that folder first on sys.path of
its own process only, then runs the same `core.cli` that `python -m core` runs from a checkout
(docs/architecture.md, "Packaging").
"""
