"""LLM Trade-off Lab: the router and the frame every page shares."""

import streamlit as st

from pages.common import sidebar

st.set_page_config(page_title="LLM Trade-off Lab", page_icon="⚖️", layout="wide")

pages = [
    st.Page("pages/home.py", title="Overview", icon="🏠", default=True),
    st.Page("pages/quantize.py", title="Quantize", icon="🗜️"),
    st.Page("pages/tradeoff_map.py", title="Trade-off Map", icon="🗺️"),
]
navigation = st.navigation(pages)
sidebar()
navigation.run()
