"""trailguard's runtime: CLI, sources, pipeline, state, sinks, metrics (all the I/O lives here)."""

from daemon.structlog_import import import_structlog

__version__ = "0.1.0"

# First, before any module of this package imports structlog: it is imported without rich then
# (rich's tracebacks are unused; see daemon.structlog_import).
import_structlog()
