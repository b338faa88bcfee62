"""Example trailguard plugin package (see README.md): one stateful detector and one sink.

Installed, it registers through entry points; not installed (only importable), list
``trailguard_example.plugin`` under ``plugins:`` in the config instead.
"""
