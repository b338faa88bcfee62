"""trailguard's runtime: CLI, sources, pipeline, state, sinks, metrics (all the I/O lives here)."""

__version__ = "0.1.0"
