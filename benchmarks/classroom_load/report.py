"""The result as written: a file rewritten whole (so a run stopped early leaves what it finished), and `--pool`,
which reads earlier `--paired --json` results and reports their rounds together."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .stats import paired_summary

def write_json_atomically(path: Path, obj: dict) -> None:
    """A reader (or --pool) sees the previous whole file or the new whole file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def pool(paths: list[Path]) -> dict:
    """The rounds of several --paired results as one: each round still pairs the dashboard with the CLI of the same
    minutes; only the medians and intervals are taken over more of them."""
    measured, sources = [], []
    for i, path in enumerate(paths):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"{path}: cannot read it as JSON ({e}); pass files written by --paired --json")
        if result.get("mode") != "paired" or "measurements" not in result:
            raise SystemExit(f"{path}: not a --paired result with its measurements; rerun with --paired --json")
        measured += [m | {"round": (i, m["round"])} for m in result["measurements"]]
        sources.append({"file": str(path), "cpu": result["cpu"], "rounds": result["rounds"],
                        "finished": result.get("finished", True),
                        "page_response_s_p90": result["page_response_s_p90"], "errors_shown": result["errors_shown"]})
    keys = list(dict.fromkeys(m["technique"] for m in measured))
    return {"pooled": sources, "rounds": len({m["round"] for m in measured}), **paired_summary(keys, measured)}
