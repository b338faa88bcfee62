"""Benchmark scenarios: each module's ``run(quick, reps)`` returns result rows for ``bench.run``."""
