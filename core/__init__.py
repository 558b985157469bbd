"""MatchLab core: train and evaluate image models for classification and verification.

Entry point for people: `python -m core --help`. Entry points for code: `core.train.fit`,
`core.evaluate.evaluate_run`, `core.models.create_model`. Importable without Streamlit or umap-learn.
"""
