"""MatchLab dashboard: a multipage Streamlit app over the artifacts that `core` writes.

Run it with `streamlit run dashboard/app.py`. `artifacts` (file reading), `views` (pure functions behind
each interaction) and `figures` (Plotly builders) import no Streamlit, so tests call them directly; `ui`
holds the shared Streamlit widgets and caches; `app_pages/` holds one file per page.
"""
