"""Headers between the broker and the verifiable service (never taken from a user).

* ``ZG-Output-Limit`` (broker -> service): the most tokens one answer may have, the
  limit the broker reserved for; the service applies the smaller of it and its own.
* ``ZG-Upstream-Model`` (broker -> service): the name the backend knows the requested
  model by, when the provider's catalog names it differently; the service sends it upstream.
* ``ZG-Prompt-Tokens`` (service -> broker): the request's prompt tokens, counted
  before the first byte of the answer, so that a stream the client cuts still pays
  its real prompt.
"""

from __future__ import annotations

OUTPUT_LIMIT = "zg-output-limit"
PROMPT_TOKENS = "zg-prompt-tokens"
UPSTREAM_MODEL = "zg-upstream-model"
# Header values are parsed as plain ASCII digits of at most this many characters.
MAX_DIGITS = 12


def parse_count(value: str | bytes | None) -> int | None:
    """A non-negative count from a header value, or None when it is not plain ASCII digits."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if not 0 < len(text) <= MAX_DIGITS or not text.isascii() or not text.isdigit():
        return None
    return int(text)
