"""The one filter for a library's log lines that are noise to our users."""

import logging


class DropLines(logging.Filter):
  """Drops the records whose message starts with one of `prefixes`; with
  `source` (a module's __file__), only those logged from that file."""

  def __init__(self, *prefixes: str, source: str | None = None):
    super().__init__()
    self.prefixes, self.source = prefixes, source

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.getMessage().startswith(self.prefixes)
                and self.source in (None, record.pathname))
