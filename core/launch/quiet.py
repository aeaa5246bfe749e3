"""Timed runs and page runs take turns, so that a room of viewers never slows what the worker measures.

Two halves: the gate the worker's timed runs close and page runs pass (core/launch/gate.py: `Gate`, `Turn`,
`GateStats`, the timings), and the web server's door that holds a browser's requests while the gate is closed
(core/launch/door.py: `Door`). Callers name them all through this module: `quiet.Gate`, `quiet.Door`,
`quiet.PAGE_WAIT_S`. The timings are looked up in core/launch/gate.py, so a test that changes one changes it there.
"""

from __future__ import annotations

from core.launch.door import Door, _GateOpening, _HeldSession
from core.launch.gate import (
                              DRAIN_WAIT_S,
                              LET_IN_S,
                              NOTICE_S,
                              PAGE_WAIT_S,
                              PANEL_EVERY_S,
                              POLL_FIRST_S,
                              POLL_MAX_S,
                              QUIET_SHARE,
                              SETTLE_S,
                              TURN_S,
                              Gate,
                              GateStats,
                              OthersMeter,
                              Turn,
                              _held_by_another,
                              _lock_within,
                              _machine_busy_s,
                              _open,
                              _own_busy_s,
                              turns_taken,
)

__all__ = ["DRAIN_WAIT_S", "LET_IN_S", "NOTICE_S", "PAGE_WAIT_S", "PANEL_EVERY_S", "POLL_FIRST_S", "POLL_MAX_S",
           "QUIET_SHARE", "SETTLE_S", "TURN_S", "Door", "Gate", "GateStats", "OthersMeter", "Turn", "_GateOpening",
           "_HeldSession", "_held_by_another", "_lock_within", "_machine_busy_s", "_open", "_own_busy_s",
           "turns_taken"]
