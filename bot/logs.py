"""Structured JSON logs with phone numbers and email addresses masked (DESIGN §11)."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime

_PHONE = re.compile(r"(?<![\w])(\+?\d[\d\s-]{6,}\d)(\d{2})(?![\w])")
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*(@[A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_SECRETS = re.compile(r"(?i)(token|secret|password|auth|authorization)(['\"]?\s*[:=]\s*['\"]?)([^\s'\",}]+)")


def mask(text: str) -> str:
    text = _SECRETS.sub(lambda m: m.group(1) + m.group(2) + "***", text)
    text = _EMAIL.sub(lambda m: m.group(1) + "***" + m.group(2), text)
    return _PHONE.sub(lambda m: "*" * min(len(m.group(1)), 8) + m.group(2), text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask(record.getMessage()),
        }
        for key in ("conversation_id", "message_id", "customer_id", "channel", "inbox_item_id"):
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exc"] = mask(self.formatException(record.exc_info))
        return json.dumps(data, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("LOKET_LOG_FORMAT", "json" if not sys.stderr.isatty() else "plain") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "alembic.runtime.migration", "aiogram.event"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
