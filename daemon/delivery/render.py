"""Neutralise attacker-controlled strings for each destination before a person reads them.

Much of an alert comes from the API call that triggered it — user names, role session names,
bucket names, user agents, request values — so whoever made the call chooses it.  Each destination
has its own ways of being fooled, handled here and nowhere else:

* **Every destination read by people**: Unicode format characters (bidi overrides such as U+202E,
  zero-width joiners, BOMs — category ``Cf``) and control characters are removed, so text cannot
  reorder itself or hide; single-line values have CR/LF/tab and the Unicode line/paragraph
  separators turned into spaces, so a value cannot forge a new line ("Severity: low"); long values
  are cut with a marker saying how much was cut.
* **Slack mrkdwn** (:func:`slack_text`, :func:`slack_code`): ``&``, ``<``, ``>`` escaped, so no
  ``<!channel>``, ``<@U123>`` or ``<https://evil|legit>`` can be forged; ``@here``/``@channel``/
  ``@everyone`` defused; the formatting characters (``*``, ``~``, `````, ``_`` at a word edge)
  replaced by look-alikes in free text so data cannot bold, strike or code-format the message.
  Exact values go in inline code (:func:`slack_code`), where Slack applies no formatting.
* **Links** (:func:`safe_link`): only ``http``/``https`` URLs are ever made into links, with the
  characters that end a Slack link (``|``, ``>``) and whitespace percent-encoded.
* **PagerDuty** (:func:`plain`, :func:`plain_data`): the summary is one line of at most 1,024
  characters; strings in ``custom_details`` are cleaned of format and control characters.

JSON structure is never at risk (orjson escapes every value); the webhook and machine sinks send
the alert as it is.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any, Final
from urllib.parse import urlsplit

from detectors.evidence import cut_text

__all__ = [
    "MAX_LINE",
    "is_url",
    "plain",
    "plain_data",
    "safe_link",
    "single_line",
    "slack_code",
    "slack_text",
]

#: Default cut for a single-line value.
MAX_LINE: Final = 300

_ASCII_HIDDEN: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_BREAKS: Final = re.compile(r"[\r\n\t\x0b\x0c\x85\u2028\u2029]+")
_MENTION: Final = re.compile(r"@(?=(?:here|channel|everyone)\b)", re.IGNORECASE)
_EDGE_UNDERSCORE: Final = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_FORMAT_LOOKALIKES: Final = str.maketrans({"*": "\u2217", "~": "\u223c", "`": "\u02cb"})


@lru_cache(maxsize=1024)
def _is_hidden(char: str) -> bool:
    category = unicodedata.category(char)
    return category == "Cf" or (category == "Cc" and char not in "\n\r\t")


def _strip_hidden(text: str) -> str:
    if text.isascii():
        return text if text.isprintable() else _ASCII_HIDDEN.sub("", text)
    return "".join(c for c in text if not _is_hidden(c))


def single_line(text: object, limit: int = MAX_LINE) -> str:
    """``text`` on one line, without hidden characters, cut to ``limit`` characters with a marker."""
    value = _strip_hidden(text if isinstance(text, str) else str(text))
    value = _LINE_BREAKS.sub(" ", value).strip()
    return cut_text(value, limit)


def plain(text: object, limit: int = MAX_LINE, *, multiline: bool = False) -> str:
    """Hidden characters removed and cut; line breaks kept only when ``multiline``."""
    if not multiline:
        return single_line(text, limit)
    value = _strip_hidden(text if isinstance(text, str) else str(text))
    value = value.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    return cut_text(value, limit)


def plain_data(value: Any, limit: int = 2000) -> Any:
    """Every string inside ``value`` (keys too) cleaned of hidden characters and cut to ``limit``."""
    if isinstance(value, str):
        return plain(value, limit, multiline=True)
    if isinstance(value, dict):
        return {plain(k, 200): plain_data(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v, limit) for v in value]
    return value


def _slack_escape(text: str) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MENTION.sub("\uff20", text)


def slack_text(text: object, limit: int = MAX_LINE, *, multiline: bool = False) -> str:
    """Free text for a Slack mrkdwn field: nothing in it can mention, link or format."""
    value = plain(text, limit, multiline=multiline)
    value = _EDGE_UNDERSCORE.sub("\uff3f", value.translate(_FORMAT_LOOKALIKES))
    return _slack_escape(value)


def slack_code(text: object, limit: int = MAX_LINE) -> str:
    """An exact value as Slack inline code (no formatting applies inside); ``—`` when empty."""
    value = single_line(text, limit)
    if not value:
        return "—"
    return f"`{_slack_escape(value.replace('`', chr(0x2CB)))}`"


def is_url(text: object) -> bool:
    """True for one absolute ``http(s)://host/…`` URL with no whitespace (a runbook link)."""
    if not isinstance(text, str) or not text or any(c.isspace() for c in text) or len(text) > 2000:
        return False
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def safe_link(url: str) -> str | None:
    """``url`` made safe to put inside a Slack ``<url|text>`` link, or ``None`` if not http(s)."""
    if not is_url(url):
        return None
    cleaned = _strip_hidden(url)
    return (cleaned.replace("|", "%7C").replace(">", "%3E").replace("<", "%3C").replace("&", "&amp;")
            .replace("'", "%27").replace('"', "%22"))
