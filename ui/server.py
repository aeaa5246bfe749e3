"""Start the dashboard: `python -m ui.server run app.py [streamlit options]`, in place of `streamlit run app.py`.

It is Streamlit's own command line (the same commands and options), with one setting made before the server starts:
see main(). Everything that starts the dashboard (`python -m core serve`, the browser tests, the benchmarks) starts it
through this module; core/ names it only as a command (`-m ui.server`), never imports it.
"""

from __future__ import annotations

from streamlit.runtime.pages_manager import PagesManager
from streamlit.web import cli


def main() -> None:
    # app.py builds the menu with st.navigation, and pages/ holds only its pages. But Streamlit (1.67) decides once
    # per process, when the first session is made (PagesManager.__init__, only while the flag is still None), that a
    # folder named pages/ beside the main script means its legacy multipage app, and runs every page load that way
    # (a menu of pages/'s files, app.py one more entry) until some run has called st.navigation, which sets the flag
    # False. So a fresh server's first visitor got that menu, and at /decide the Decide script alone: no frame, no
    # model sidebar, no page-turn gate. Setting it False first means every run, the first too, runs app.py's
    # navigation. tests/test_pages.py pins this Streamlit internal; tests/test_first_visit_browser.py shows the result.
    PagesManager.uses_pages_directory = False
    cli.main(prog_name="streamlit")  # what `python -m streamlit` runs: argv as `streamlit` would read it


if __name__ == "__main__":
    main()
