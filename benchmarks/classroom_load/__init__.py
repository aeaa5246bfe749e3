"""Load test of the dashboard with a room of viewers: `python benchmarks/classroom_load --help` (the __main__ module).

Modules by concern: session (a viewer and the presenter over Streamlit's protocol), browsers (real Chromium pages),
lab (the lab under test and the CLI reference), machine (CPU shares), stats (the numbers), rounds and paired (the
two ways of measuring), report (the result and --pool).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout whose lab is tested, and whose core/ this package reads
if str(ROOT) not in sys.path:  # started from benchmarks/ (room_cost.py, the tests), core/ is not on the path yet
    sys.path.insert(0, str(ROOT))
