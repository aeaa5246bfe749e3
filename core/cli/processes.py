"""`python -m core worker` and `serve`: the lab's own processes. The worker runs the dashboard's queued jobs one at a
time apart from the web server (each claimed job runs in a child, `python -m core.launch.worker --job N`); serve starts it, then the
dashboard in the foreground.
"""

from __future__ import annotations

import argparse
import os
import sys

from core.launch import roles, worker
from core.paths import repo_root


def cmd_worker(args: argparse.Namespace) -> None:
    """The worker itself is core/launch/worker.py (`python -m core.launch.worker`); this only starts it."""
    code = worker.main(["--until-idle"] if args.until_idle else [])
    if code:
        raise SystemExit(code)


def cmd_serve(args: argparse.Namespace) -> None:
    """Start the worker, then the dashboard in the foreground. For an audience, print the presenter link here,
    on the presenter's terminal only; the browser pages never show it."""
    env = dict(os.environ)
    extra = []
    if roles.wants_classroom(args.host, args.classroom):
        env[roles.CLASSROOM_ENV] = "1"
        token = os.environ.get(roles.TOKEN_ENV) or roles.new_token()
        print("Classroom mode: everyone who opens the lab is a viewer. Open this link yourself to present",
              "(keep it to yourself; it changes at every start):", file=sys.stderr)
        print(f"    {roles.presenter_link(args.host, args.port, token)}", file=sys.stderr, flush=True)
        # Viewers never see a traceback or the developer menu.
        extra = ["--client.showErrorDetails", "none", "--client.toolbarMode", "viewer"]
    os.environ.update(env)
    worker.ensure_running()
    command = [sys.executable, "-m", "ui.server", "run", "app.py", "--server.address", args.host,
               "--server.port", str(args.port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
               *extra]
    os.chdir(repo_root())
    os.execvpe(command[0], command, env)


def add_parsers(sub) -> None:
    """Registers `worker` and `serve` on `sub` (argparse's subparsers)."""
    w = sub.add_parser("worker", help="run the dashboard's queued jobs one at a time, apart from the web server")
    w.add_argument("--until-idle", action="store_true", help="exit once the queue is empty (tests, scripts)")
    w.set_defaults(func=cmd_worker)
    sv = sub.add_parser("serve", help="start the worker and the dashboard (classroom mode off loopback)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8501)
    sv.add_argument("--classroom", action="store_true", help="roles and a presenter link even on 127.0.0.1")
    sv.set_defaults(func=cmd_serve)
