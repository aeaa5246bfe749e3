"""A freshly started server's very first visitor sees the app's navigation, the page asked for, and the sidebar.

Streamlit (1.67) runs every script run of a fresh server through its legacy multipage mode, a menu of every file in a
`pages/` folder beside app.py with app.py as just one more page, until some session's run has called st.navigation.
The first visitor then got that file listing: at /decide the Decide script ran alone (no frame, no model sidebar,
no gate), and at / the listing stood for as long as app.py's first imports took. The lab's launcher, ui/server.py,
turns that mode off before the server starts; these tests start the server as the lab does (tests/dashboard.py), so
they fail with a plain `streamlit run app.py`. Each test starts its own server so that its browser is the first one
to ask for a page; every menu entry drawn during the load is recorded.
"""

from __future__ import annotations

import ast

import pytest

from tests import dashboard

pytestmark = pytest.mark.browser
# Every label the sidebar's menu shows during the load, recorded as it is drawn: a listing that stood for a moment
# and was then replaced counts too.
RECORD_MENU = """
window.menuSeen = new Set();
new MutationObserver(() => {
  for (const link of document.querySelectorAll("[data-testid='stSidebarNav'] a")) {
    const lines = link.innerText.split("\\n").filter((line) => line.trim());
    if (lines.length) window.menuSeen.add(lines[lines.length - 1].trim());  // the label, after the icon's name
  }
}).observe(document, {childList: true, subtree: true, characterData: true});
"""


def app_titles() -> list[str]:
    """The titles of app.py's PAGES, read from its source (importing app.py would run it)."""
    tree = ast.parse((dashboard.ROOT / "app.py").read_text())
    pages = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", "") == "PAGES" for t in node.targets))
    return [title for _, title, _ in ast.literal_eval(pages)]


@pytest.mark.parametrize(("path", "heading"), [("decide", "Decide"), ("", "LLM Trade-off Lab")],
                         ids=["decide-first", "root-first"])
def test_the_first_visitor_of_a_fresh_server_gets_the_apps_navigation(tmp_path, path, heading):
    titles = app_titles()
    with dashboard.running(tmp_path / "data") as url, dashboard.chromium() as browser:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.add_init_script(RECORD_MENU)
        page = context.new_page()
        page.goto(f"{url}/{path}")
        page.get_by_role("heading", name=heading).first.wait_for(timeout=180_000)
        sidebar = page.locator("[data-testid='stSidebar']")
        menu = sidebar.locator("[data-testid='stSidebarNav'] a")
        menu.nth(len(titles) - 1).wait_for(timeout=60_000)
        shown = [text.strip().split("\n")[-1].strip() for text in menu.all_inner_texts()]
        assert shown == titles, f"the sidebar's menu is {shown}, not app.py's pages"
        sidebar.get_by_text("Hardware price", exact=True).wait_for(timeout=60_000)  # the frame's sidebar: model, price
        assert page.url.rstrip("/") == f"{url}/{path}".rstrip("/")  # the page asked for, not a fallback
        page.wait_for_timeout(1000)
        seen = set(page.evaluate("[...window.menuSeen]"))
        assert seen <= set(titles), f"Streamlit's listing of files was drawn during the load: {sorted(seen - set(titles))}"
        context.close()
