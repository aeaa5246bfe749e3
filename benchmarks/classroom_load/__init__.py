"""Load test of the dashboard with a room of viewers: `python benchmarks/classroom_load --help` (the __main__ module)."""
