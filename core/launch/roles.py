"""Who may do what when the lab is opened for an audience: the presenter's secret link, as Jupyter does it.

By default (one person at 127.0.0.1) there are no roles: that person is the presenter. In classroom mode
($LAB_CLASSROOM=1, set by `python -m core serve --classroom` or any non-loopback host) only a browser session
that opened the presenter link, `http://host:port/?token=...`, is the presenter; everyone else is a viewer.
The token lives in data/presenter.token (mode 0600, a fresh one each start) or in $LAB_PRESENTER_TOKEN, and
is compared in constant time. It is printed once, on the presenter's terminal, and never drawn in a page.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
from pathlib import Path

from core.launch.jobqueue import NotAllowed
from core.paths import data_dir

CLASSROOM_ENV = "LAB_CLASSROOM"
TOKEN_ENV = "LAB_PRESENTER_TOKEN"
TOKEN_FILE = "presenter.token"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_PATH = re.compile(r"(?<![\w.])(?:/[\w.@+-]+){2,}/?")  # /a/b..., not the slashes of "fp32/bf16/nf4"


def hide_paths(text: str) -> str:
    """What a viewer may read of a message: server paths replaced (they name the server's disk)."""
    return _PATH.sub("<server path>", text)


def without_paths(record):
    """A copy of a stored record (VariantRecord or ServingRecord) with every server path in it replaced, for what
    a viewer downloads: a record's settings name the eval files and texts it was measured on."""
    # Replacing inside the JSON text keeps it valid: a path never spans a quote, and "<server path>" needs no escape.
    return type(record).from_dict(json.loads(hide_paths(json.dumps(record.to_dict()))))


def classroom() -> bool:
    return os.environ.get(CLASSROOM_ENV) == "1"


def token_path() -> Path:
    return data_dir() / TOKEN_FILE


def new_token() -> str:
    """A fresh token, written 0600 from the start (never world-readable, not even for an instant)."""
    token = secrets.token_urlsafe(32)
    path = token_path()
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    os.replace(tmp, path)
    return token


def presenter_token() -> str:
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    try:
        return token_path().read_text().strip() or new_token()
    except FileNotFoundError:
        return new_token()


def is_presenter_token(given: str | None) -> bool:
    """Constant-time comparison; anything missing or malformed is simply not the presenter."""
    if not given or not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), presenter_token().encode("utf-8"))


def wants_classroom(host: str, flag: bool) -> bool:
    return flag or classroom() or host not in LOOPBACK


def presenter_link(host: str, port: int, token: str) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # the presenter opens it on this machine
    return f"http://{shown}:{port}/?token={token}"


def clear_results(store, presenter: bool) -> None:
    """Only the presenter empties the shared results store: a viewer's click must not erase the room's work."""
    if not presenter:
        raise NotAllowed("Only the presenter can clear the results.")
    store.clear()
