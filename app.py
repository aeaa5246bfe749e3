"""LLM Trade-off Lab: the router and the frame every page shares."""

import streamlit as st

from ui.frame import sidebar
from ui.turns import page_turn

# The pages live in app_pages/, not pages/: Streamlit treats a pages/ folder beside the main script as a legacy
# multipage app (a menu of its files, app.py one page among them) for every run of a fresh server until some session's
# run has called st.navigation, so the first visitor got that menu, and at /decide the page without this frame.
PAGES = [  # (script, title, icon); the first is the default page
    ("app_pages/home.py", "Overview", ":material/home:"),
    ("app_pages/quantize.py", "Quantize", ":material/compress:"),
    ("app_pages/lora.py", "Fine-tune (LoRA)", ":material/tune:"),
    ("app_pages/distill.py", "Distill", ":material/school:"),
    ("app_pages/moe.py", "Mixture of experts", ":material/hub:"),
    ("app_pages/tradeoff_map.py", "Trade-off Map", ":material/scatter_plot:"),
    ("app_pages/arena.py", "Arena", ":material/sports_score:"),
    ("app_pages/serve.py", "Serve", ":material/dns:"),
    ("app_pages/hybrids.py", "Hybrids", ":material/call_split:"),
    ("app_pages/decide.py", "Decide", ":material/task_alt:"),
    ("app_pages/report.py", "Report", ":material/description:"),
]

# While the worker times a model, a page run waits here, before it does any work: a room of viewers whose page
# runs each drew the frame first kept the web server busy on the cores being timed (core/launch/quiet.py says more).
with page_turn():
    st.set_page_config(page_title="LLM Trade-off Lab", page_icon=":material/balance:", layout="wide")
    navigation = st.navigation([st.Page(script, title=title, icon=icon, default=i == 0)
                                for i, (script, title, icon) in enumerate(PAGES)])
    sidebar()
    navigation.run()
