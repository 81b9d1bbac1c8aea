"""Library log lines that ask nothing of the user, dropped by the module that knows why."""

from __future__ import annotations

import logging


class _Notice(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def drop_notice(logger: str, prefix: str) -> None:
    """Drop ``logger``'s records whose message starts with ``prefix``; its other records still show."""
    logging.getLogger(logger).addFilter(_Notice(prefix))
