"""Structured JSON logs. Fields passed with `extra=` become top-level keys."""
import json
import logging
import sys
from contextvars import ContextVar
from datetime import datetime, timezone

# Ids carried through a request or message handler, added to every log line while set.
log_context: ContextVar[dict] = ContextVar("log_context", default={})

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_SECRET_KEYS = {"api_key", "token", "authorization", "password", "secret", "stripe_signature"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(log_context.get())
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = "[redacted]" if key.lower() in _SECRET_KEYS else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # library warnings become JSON lines too
    for noisy in ("aiormq", "aio_pika", "faststream", "uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
