"""LLM Trade-off Lab: the router and the frame every page shares."""

import streamlit as st

from ui.frame import sidebar
from ui.turns import page_turn

PAGES = [  # (script, title, icon); the first is the default page
    ("pages/home.py", "Overview", ":material/home:"),
    ("pages/quantize.py", "Quantize", ":material/compress:"),
    ("pages/lora.py", "Fine-tune (LoRA)", ":material/tune:"),
    ("pages/distill.py", "Distill", ":material/school:"),
    ("pages/moe.py", "Mixture of experts", ":material/hub:"),
    ("pages/tradeoff_map.py", "Trade-off Map", ":material/scatter_plot:"),
    ("pages/arena.py", "Arena", ":material/sports_score:"),
    ("pages/task.py", "Your task", ":material/fact_check:"),
    ("pages/serve.py", "Serve", ":material/dns:"),
    ("pages/hybrids.py", "Hybrids", ":material/call_split:"),
    ("pages/decide.py", "Decide", ":material/task_alt:"),
    ("pages/report.py", "Report", ":material/description:"),
]

# While the worker times a model, a page run waits here, before it does any work: a room of viewers whose page
# runs each drew the frame first kept the web server busy on the cores being timed (core/launch/quiet.py says more).
with page_turn():
    st.set_page_config(page_title="LLM Trade-off Lab", page_icon=":material/balance:", layout="wide")
    navigation = st.navigation([st.Page(script, title=title, icon=icon, default=i == 0)
                                for i, (script, title, icon) in enumerate(PAGES)])
    sidebar()
    navigation.run()
