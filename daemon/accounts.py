"""The account map: ``account id → name, environment, owner, tags``, carried in every alert.

"111122223333" means nothing at 3 a.m.; "payments-prod (prod, owner: payments-team)" does, and it
is what routing needs to page for production only.  The map comes from the ``accounts:`` section
of the config, inline, from a file, or both (inline entries win)::

    accounts:
      path: accounts.csv            # or .yaml/.yml; relative to the config file
      entries:
        "111122223333": {name: payments-prod, environment: prod, owner: payments-team, tags: [pci]}

A YAML file is a mapping of the same entries; a CSV file has a header row with ``account_id`` and
``name`` and optionally ``environment``, ``owner``, ``tags`` (tags separated by ``;``).  Account
ids are 12 digits and must be quoted in YAML (an unquoted ``012345678901`` is a number that lost its
leading zero).  Every problem names the file, the key or line, and the fix, and the daemon refuses
to start — a typo must not silently route production alerts as if they were from a sandbox.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daemon.config import Config, ConfigError, format_validation_error
from detectors.alert import Alert

__all__ = ["AccountEntry", "AccountMap", "AccountsConfig", "build_account_map", "load_account_map"]

_ACCOUNT_ID: Final = re.compile(r"^\d{12}$")
_CSV_COLUMNS: Final = ("account_id", "name", "environment", "owner", "tags")


class AccountEntry(BaseModel):
    """What is known about one account."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    environment: str = ""
    owner: str = ""
    tags: tuple[str, ...] = ()

    def wire(self) -> dict[str, Any]:
        """The alert's ``account`` object."""
        return {"name": self.name, "environment": self.environment, "owner": self.owner,
                "tags": list(self.tags)}


class AccountsConfig(BaseModel):
    """The ``accounts:`` section: an optional ``path`` and inline ``entries``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = None
    """A ``.yaml``/``.yml`` or ``.csv`` file of entries (relative to the config file)."""
    entries: dict[str, AccountEntry] = {}
    """Account id (12 digits, quoted) → entry; these win over the file's."""


class AccountMap:
    """Looks accounts up and stamps ``account_name``/``account`` on alerts."""

    def __init__(self, entries: dict[str, AccountEntry] | None = None) -> None:
        self.entries: dict[str, AccountEntry] = dict(entries or {})
        self._wire = {account: entry.wire() for account, entry in self.entries.items()}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, account_id: str) -> AccountEntry | None:
        """The entry of ``account_id`` or ``None``."""
        return self.entries.get(account_id)

    def annotate(self, alert: Alert) -> None:
        """Give ``alert`` the name and details of its account (unknown accounts are left as they are)."""
        wire = self._wire.get(alert.account_id)
        if wire is not None:
            alert.account_name = wire["name"]
            alert.account = dict(wire)


def _check_ids(entries: dict[Any, Any], source: str, where: str, problems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in entries.items():
        if isinstance(key, int) and not isinstance(key, bool):
            problems.append(f"{source}: {where}.{key}: account id is a number, not a string (YAML drops leading "
                            f"zeros); fix: quote it, e.g. \"{key:012d}\"")
            continue
        if not isinstance(key, str) or not _ACCOUNT_ID.match(key):
            problems.append(f"{source}: {where}.{key}: not an AWS account id; fix: use the 12-digit id, quoted")
            continue
        out[key] = value
    return out


def _validate(raw: dict[str, Any], source: str, where: str, problems: list[str]) -> dict[str, AccountEntry]:
    out: dict[str, AccountEntry] = {}
    for account, value in _check_ids(raw, source, where, problems).items():
        if isinstance(value, str):  # shorthand: "111122223333": payments-prod
            value = {"name": value}
        try:
            out[account] = AccountEntry.model_validate(value)
        except ValidationError as error:
            problems.extend(format_validation_error(source, f"{where}.{account}", error))
    return out


def _read_yaml(path: Path, text: str, problems: list[str]) -> dict[str, AccountEntry]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problems.append(f"{path}: not valid YAML{at}; fix: correct the syntax")
        return {}
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{path}: must be a mapping of account id → {{name, environment, owner, tags}}; "
                        "fix: see docs/alert-content.md")
        return {}
    return _validate(raw, str(path), "<top>", problems)


def _read_csv(path: Path, text: str, problems: list[str]) -> dict[str, AccountEntry]:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    unknown = [c for c in header if c not in _CSV_COLUMNS]
    if "account_id" not in header or "name" not in header or unknown:
        extra = f" (unknown: {', '.join(unknown)})" if unknown else ""
        problems.append(f"{path}: line 1: the header must name account_id and name, and may add environment, "
                        f"owner, tags{extra}; fix: write e.g. 'account_id,name,environment,owner,tags'")
        return {}
    raw: dict[str, Any] = {}
    for row in reader:
        line = reader.line_num
        account = (row.get("account_id") or "").strip()
        if account in raw:
            problems.append(f"{path}: line {line}: account {account} is listed twice; fix: keep one row")
            continue
        tags = [t.strip() for t in (row.get("tags") or "").split(";") if t.strip()]
        entry = {"name": (row.get("name") or "").strip(), "environment": (row.get("environment") or "").strip(),
                 "owner": (row.get("owner") or "").strip(), "tags": tags}
        raw[account] = entry
        if not _ACCOUNT_ID.match(account):
            problems.append(f"{path}: line {line}: account_id {account!r} is not a 12-digit AWS account id; "
                            "fix: correct it (keep leading zeros)")
            del raw[account]
    return _validate(raw, str(path), "line", problems)


def load_account_map(section: Any, *, source: str = "<config>",
                     resolve: Any = None) -> AccountMap:
    """Validate an ``accounts:`` section (and read its file); raise :class:`ConfigError` on any problem."""
    problems: list[str] = []
    if section in (None, {}):
        return AccountMap()
    if not isinstance(section, dict):
        raise ConfigError([f"{source}: accounts: must be a mapping with 'path' and/or 'entries'; "
                           "fix: see docs/alert-content.md"])
    raw_entries = section.get("entries")
    if isinstance(raw_entries, dict):
        inline = _validate(raw_entries, source, "accounts.entries", problems)
        section = {**section, "entries": {}}
    else:
        inline = {}
    try:
        config = AccountsConfig.model_validate(section)
    except ValidationError as error:
        raise ConfigError(format_validation_error(source, "accounts", error) + problems) from None
    entries: dict[str, AccountEntry] = {}
    if config.path:
        path = Path(resolve(config.path) if resolve else config.path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            problems.append(f"{source}: accounts.path: cannot read {path}: {reason}; fix: point it at a "
                            ".yaml or .csv account map")
            text = None
        if text is not None:
            if path.suffix.lower() == ".csv":
                entries = _read_csv(path, text, problems)
            elif path.suffix.lower() in (".yaml", ".yml"):
                entries = _read_yaml(path, text, problems)
            else:
                problems.append(f"{source}: accounts.path: {path} is neither .csv nor .yaml/.yml; "
                                "fix: rename it or convert it")
    if problems:
        raise ConfigError(problems)
    entries.update(inline)
    return AccountMap(entries)


def build_account_map(config: Config, source: str = "<defaults>") -> AccountMap:
    """The account map of a loaded config (``accounts:`` section, paths relative to the file)."""
    return load_account_map(config.accounts, source=source, resolve=config.resolve_path)
