"""Data audit: what in a dataset is the data's fault rather than the model's (issue 14).

Entry points: `core.audit.run.audit_run` (`python -m core audit RUN --data DIR`), the pure analysis in
`core.audit.analysis.analyse`, image quality and error-versus-reject in `core.audit.quality`, and
`core.audit.faults.inject_faults`, which corrupts a copy of a folder so the audit's recall can be measured.
Kept as submodules (nothing imported here) so `import core.audit.faults` stays free of torch.
"""
