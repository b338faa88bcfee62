"""structlog, imported without the rich console library it probes for.

Why: ``import structlog`` imports rich (and pygments through it) whenever rich is installed, only to
offer rich tracebacks — ~0.07-0.1 s CPU of every daemon start-up, more than its whole share of
logging.  trailguard never uses them: JSON logs render tracebacks as dicts without frame locals, and
console logs use :func:`structlog.dev.plain_traceback` (rich's default shows frame locals, which can
be a SASL password or a webhook URL).  rich stays a dependency for ``replay``'s and ``rules``'
console output, which import it themselves.

How: while structlog's own modules are first imported, a meta-path finder in front of the import
system answers "not installed" for ``rich``; it is removed right after.  ``sys.modules`` is never
written, so a later ``import rich`` (``replay``, a plugin) loads the real package as usual.  When
structlog or rich is already imported (an embedding application, a test run), nothing is hidden.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

__all__ = ["HIDDEN", "import_structlog"]

#: The package structlog imports optionally at import time and trailguard's logs do not use.
HIDDEN = "rich"


class _HideFromImport(importlib.abc.MetaPathFinder):
    """Reports one top-level package (and its submodules) as not installed."""

    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname == self.package or fullname.startswith(self.package + "."):
            raise ModuleNotFoundError(f"{fullname} is not imported by trailguard's logging", name=fullname)
        return None


def import_structlog() -> ModuleType:
    """The ``structlog`` module, imported (the first time) with :data:`HIDDEN` reported absent."""
    if "structlog" in sys.modules or HIDDEN in sys.modules:
        import structlog

        return structlog
    finder = _HideFromImport(HIDDEN)
    sys.meta_path.insert(0, finder)
    try:
        import structlog
        import structlog.dev
        import structlog.tracebacks
    finally:
        sys.meta_path.remove(finder)
    return structlog
