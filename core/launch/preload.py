"""Imports that the web server makes whole once, before any page draws.

First imports are not safe across page runs at once. plotly finds pandas through sys.modules, so one first page
run picked up the module another was still importing ("partially initialized module 'pandas' has no attribute
'Series'": 25 errors when thirty viewers arrived together), and transformers resolves its names lazily ("cannot
import name 'AutoConfig'"). pages/common.py imports this module, and every page run imports that one first; Python
makes the other page runs wait until it is done, so both are whole by the time a page can see them.
"""

import pandas  # noqa: F401
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401
