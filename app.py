"""LLM Trade-off Lab: the router and the frame every page shares."""

import streamlit as st

from pages.common import page_turn, sidebar

st.set_page_config(page_title="LLM Trade-off Lab", page_icon=":material/balance:", layout="wide")

pages = [
    st.Page("pages/home.py", title="Overview", icon=":material/home:", default=True),
    st.Page("pages/quantize.py", title="Quantize", icon=":material/compress:"),
    st.Page("pages/lora.py", title="Fine-tune (LoRA)", icon=":material/tune:"),
    st.Page("pages/distill.py", title="Distill", icon=":material/school:"),
    st.Page("pages/moe.py", title="Mixture of experts", icon=":material/hub:"),
    st.Page("pages/tradeoff_map.py", title="Trade-off Map", icon=":material/scatter_plot:"),
    st.Page("pages/arena.py", title="Arena", icon=":material/sports_score:"),
    st.Page("pages/serve.py", title="Serve", icon=":material/dns:"),
    st.Page("pages/decide.py", title="Decide", icon=":material/task_alt:"),
    st.Page("pages/report.py", title="Report", icon=":material/description:"),
]
navigation = st.navigation(pages)
with page_turn():  # while the worker times a model, pages wait their turn
    sidebar()
    navigation.run()
