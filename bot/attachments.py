"""Attachment storage: content-addressed files under ``<data dir>/attachments/<sha256[:2]>/<sha256>``."""

from __future__ import annotations

import hashlib
import mimetypes
import os
from pathlib import Path

from bot.messages import Attachment

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
ALLOWED_PREFIXES = ("image/", "audio/", "video/", "text/", "application/pdf", "application/msword",
                    "application/vnd.openxmlformats", "application/vnd.ms-", "application/zip",
                    "application/octet-stream", "text/calendar")


class AttachmentRejected(Exception):
    """Too large or of a type we do not accept; ``reason`` is readable by the customer's agent."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AttachmentStore:
    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = root / "attachments"
        self.max_bytes = max_bytes

    def check(self, filename: str, content_type: str | None, size: int) -> str:
        ctype = (content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream").lower()
        if size > self.max_bytes:
            raise AttachmentRejected(
                f"{filename!r} is {size / 1e6:.1f} MB; the limit is {self.max_bytes / 1e6:.0f} MB"
            )
        if not ctype.startswith(ALLOWED_PREFIXES):
            raise AttachmentRejected(f"{filename!r} has an unsupported type {ctype}")
        return ctype

    def save(self, data: bytes, filename: str, content_type: str | None = None) -> Attachment:
        ctype = self.check(filename, content_type, len(data))
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp" + str(os.getpid()))
            tmp.write_bytes(data)
            os.replace(tmp, path)
        safe_name = os.path.basename(filename.replace("\\", "/")) or "attachment"
        return Attachment(filename=safe_name[:200], content_type=ctype, size=len(data), sha256=digest)

    def path_for(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError("not a sha256 digest")
        return self.root / digest[:2] / digest

    def read(self, digest: str) -> bytes:
        return self.path_for(digest).read_bytes()
