"""The smallest Streamlit app with MatchLab's server settings: one page, one title.

tests/dashboard/test_browser.py times its first paint in the same Chromium run as the Overview's, so the
page-time JSON can say how much of the Overview's first paint is Streamlit's own start-up in the browser
(loading and running its JavaScript bundle, opening the websocket) rather than MatchLab's.
"""

import streamlit as st

st.set_page_config(page_title="bare", layout="wide")
st.title("Bare Streamlit")
