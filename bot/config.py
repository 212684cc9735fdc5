"""Settings from the environment (and a ``.env`` file in the working directory). DESIGN §13."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import load_dotenv


class ConfigError(Exception):
    """A setting is missing or malformed; the message says which and how to fix it."""


DEFAULT_DATA_DIR = "loket-data"


def data_dir_from(env: dict[str, str]) -> Path:
    """Where Loket keeps its files: ``LOKET_DATA_DIR``, else ``loket-data`` in the working directory."""
    return Path(env.get("LOKET_DATA_DIR", DEFAULT_DATA_DIR))


def _bool(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a whole number; set it to e.g. {default}") from exc


def _days(env: dict[str, str], name: str, default: int) -> int:
    days = _int(env, name, default)
    if days < 0:
        raise ConfigError(f"{name}={days} cannot be negative; give a number of days, or 0 to keep those rows")
    return days


def non_negative(env: dict[str, str], name: str, default: float, zero: str = "switches it off") -> float:
    """A number setting that must not be negative (``zero``: what 0 does, for the error message)."""
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number; set it to e.g. {default:g}") from exc
    if value < 0:
        raise ConfigError(f"{name}={raw!r} must not be negative (0 {zero})")
    return value


def _port_or_off(env: dict[str, str], name: str, default: int) -> int | None:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    if raw.lower() in {"off", "false", "no", "none"}:
        return None
    if not raw.isdigit() or int(raw) > 65535:
        raise ConfigError(f"{name}={raw!r} is not a TCP port; use e.g. {default}, 0 for any free port, or off")
    return int(raw)


def normalize_database_url(url: str) -> str:
    """Accept the URLs people paste (postgres://, postgresql://, sqlite:///) and pick the async drivers."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url[len("postgresql://") :]
    if url.startswith("sqlite:///"):
        url = "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    if not (url.startswith("postgresql+asyncpg://") or url.startswith("sqlite+aiosqlite://")):
        raise ConfigError(
            f"DATABASE_URL={url!r} is not supported: use sqlite:///path/to/loket.db "
            "or postgresql://user@host:5432/dbname"
        )
    return url


@dataclass
class Settings:
    database_url: str = "sqlite+aiosqlite:///loket.db"
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    secret_key: str = ""
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    demo: bool = True
    verify_signatures: bool = True
    max_message_chars: int = 4096
    reopen_window_hours: int = 24
    route_at_receive: bool = True
    dispatch_max_attempts: int = 8
    dispatch_max_age_seconds: int = 3600
    dispatch_backoff_base: float = 0.5
    dispatch_backoff_cap: float = 300.0
    telegram_bot_token: str | None = None
    telegram_webhook_secret: str | None = None
    telegram_api_base: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_whatsapp_from: str | None = None
    twilio_api_base: str | None = None
    twilio_templates: dict[str, str] = field(default_factory=dict)
    imap: dict[str, str] = field(default_factory=dict)
    smtp: dict[str, str] = field(default_factory=dict)
    flows_path: Path | None = None
    kb_path: Path | None = None
    fault_point: str | None = None
    log_level: str = "INFO"
    retain_inbox_days: int = 30
    retain_outbox_days: int = 30
    retain_webhook_days: int = 30
    retain_failed_days: int = 90
    housekeeping_interval_seconds: float = 3600.0  # 0: no background pruning (``loket db prune`` still works)
    db_upkeep_interval_seconds: float = 15.0  # 0: no background upkeep (``loket db upkeep`` still works)
    worker_metrics_port: int | None = 9108  # None: a worker serves no HTTP at all
    env: dict[str, str] = field(default_factory=dict)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, dotenv: bool = True) -> Settings:
        if environ is None:
            if dotenv:
                load_dotenv(Path.cwd() / ".env", override=False)
            environ = dict(os.environ)
        env = environ
        host = env.get("LOKET_HOST", "127.0.0.1")
        port = _int(env, "LOKET_PORT", 8080)
        templates_raw = env.get("TWILIO_TEMPLATES", "")
        try:
            templates = json.loads(templates_raw) if templates_raw else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(
                'TWILIO_TEMPLATES must be a JSON object such as {"appointment_reminder": "HX..."}: ' + str(exc)
            ) from exc
        secret = env.get("LOKET_SECRET_KEY") or ""
        data_dir = data_dir_from(env)
        if not secret:
            # Embedded default: keep a generated key beside the data so sessions survive restarts.
            key_file = data_dir / "secret.key"
            if key_file.exists():
                secret = key_file.read_text().strip()
            else:
                data_dir.mkdir(parents=True, exist_ok=True)
                secret = secrets.token_urlsafe(48)
                key_file.write_text(secret)
                key_file.chmod(0o600)
        return cls(
            database_url=normalize_database_url(env.get("DATABASE_URL") or "sqlite:///loket.db"),
            redis_url=env.get("REDIS_URL") or None,
            host=host,
            port=port,
            public_url=(env.get("LOKET_PUBLIC_URL") or f"http://{host}:{port}").rstrip("/"),
            secret_key=secret,
            data_dir=data_dir,
            demo=_bool(env.get("LOKET_DEMO"), True),
            verify_signatures=not _bool(env.get("LOKET_INSECURE_SKIP_SIGNATURES"), False),
            max_message_chars=_int(env, "LOKET_MAX_MESSAGE_CHARS", 4096),
            reopen_window_hours=_int(env, "LOKET_REOPEN_WINDOW_HOURS", 24),
            route_at_receive=_bool(env.get("LOKET_ROUTE_AT_RECEIVE"), True),
            dispatch_max_attempts=_int(env, "LOKET_DISPATCH_MAX_ATTEMPTS", 8),
            dispatch_max_age_seconds=_int(env, "LOKET_DISPATCH_MAX_AGE_SECONDS", 3600),
            dispatch_backoff_base=float(env.get("LOKET_DISPATCH_BACKOFF_BASE", "0.5")),
            dispatch_backoff_cap=float(env.get("LOKET_DISPATCH_BACKOFF_CAP", "300")),
            telegram_bot_token=env.get("TELEGRAM_BOT_TOKEN") or None,
            telegram_webhook_secret=env.get("TELEGRAM_WEBHOOK_SECRET") or None,
            telegram_api_base=env.get("TELEGRAM_API_BASE") or None,
            twilio_account_sid=env.get("TWILIO_ACCOUNT_SID") or None,
            twilio_auth_token=env.get("TWILIO_AUTH_TOKEN") or None,
            twilio_whatsapp_from=env.get("TWILIO_WHATSAPP_FROM") or None,
            twilio_api_base=env.get("TWILIO_API_BASE") or None,
            twilio_templates=templates,
            imap={k[5:].lower(): v for k, v in env.items() if k.startswith("IMAP_")},
            smtp={k[5:].lower(): v for k, v in env.items() if k.startswith("SMTP_")},
            flows_path=Path(env["LOKET_FLOWS"]) if env.get("LOKET_FLOWS") else None,
            kb_path=Path(env["LOKET_KB"]) if env.get("LOKET_KB") else None,
            fault_point=env.get("LOKET_FAULT_POINT") or None,
            log_level=env.get("LOKET_LOG_LEVEL", "INFO"),
            retain_inbox_days=_days(env, "LOKET_RETAIN_INBOX_DAYS", 30),
            retain_outbox_days=_days(env, "LOKET_RETAIN_OUTBOX_DAYS", 30),
            retain_webhook_days=_days(env, "LOKET_RETAIN_WEBHOOK_DAYS", 30),
            retain_failed_days=_days(env, "LOKET_RETAIN_FAILED_DAYS", 90),
            housekeeping_interval_seconds=non_negative(env, "LOKET_HOUSEKEEPING_INTERVAL_SECONDS", 3600.0),
            db_upkeep_interval_seconds=non_negative(env, "LOKET_DB_UPKEEP_INTERVAL_SECONDS", 15.0),
            worker_metrics_port=_port_or_off(env, "LOKET_WORKER_METRICS_PORT", 9108),
            env=dict(env),
        )
