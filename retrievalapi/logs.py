"""Structured logging: `key=value` text or JSON lines, for the service and the library it calls."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

_HANDLER_NAME = "retrievalapi"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; access lines carry their fields as keys (`extra={"event", "fields"}`)."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name,
            "message": getattr(record, "event", None) or record.getMessage(),
            **(getattr(record, "fields", None) or {}),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Give our loggers a handler when nobody configured logging (uvicorn only configures its own).

    When the host did configure logging (`imageretrieval serve`, tests), its handlers and format apply.
    """
    if logging.getLogger().handlers:  # configured by the host (pytest, an embedding app): leave it
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("retrievalapi", "imageretrieval"):
        logger = logging.getLogger(name)
        if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
            logger.addHandler(handler)
        logger.setLevel(level.upper())
        logger.propagate = False
