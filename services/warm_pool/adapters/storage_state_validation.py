"""Shapes of a storage state (storage_state's docstring), checked: everything read back from a
browser, or handed in to restore, is untrusted. Known fields of the right type are kept, unknown
ones dropped, anything else is InvalidState."""
import re
from urllib.parse import urlsplit

MAX_COOKIES = 10_000  # Chromium keeps ~3,300 at most
MAX_ORIGINS = 500
COOKIE_FIELDS = {"name": str, "value": str, "domain": str, "path": str, "expires": (int, float), "httpOnly": bool,
                 "secure": bool, "session": bool, "sameSite": str, "priority": str, "sourceScheme": str,
                 "sourcePort": int, "partitionKey": dict}
HOST = re.compile(r"[a-z0-9_\-]+(\.[a-z0-9_\-]+)*\.?|\[[0-9a-f:.]+\]")


class InvalidState(ValueError):
    pass


def origin_of(url: object) -> str | None:
    """The http(s) origin of a URL as the browser spells it (`new URL(url).origin`), else None."""
    if not isinstance(url, str) or len(url) > 8192:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        return None
    host = f"[{host}]" if ":" in host else host
    if not HOST.fullmatch(host):
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def as_origin(value: object) -> str:
    """`value` if it is an origin exactly (no path, query, credentials), else InvalidState."""
    origin = origin_of(value)
    if origin is None or value not in (origin, origin + "/"):
        raise InvalidState(f"not an http(s) origin: {str(value)[:100]!r}")
    return origin


def valid_cookies(raw: object, *, for_restore: bool) -> list[dict]:
    """Cookies as Network.Cookie dicts (capture) or Storage.setCookies CookieParams (restore):
    known fields of the right type only; session cookies keep no expiry."""
    if not isinstance(raw, list) or len(raw) > MAX_COOKIES:
        raise InvalidState(f"cookies: a list of at most {MAX_COOKIES}")
    out = []
    for cookie in raw:
        if not isinstance(cookie, dict) or not all(isinstance(cookie.get(k), str) for k in ("name", "value", "domain")):
            raise InvalidState("a cookie needs a name, value and domain")
        if cookie.get("partitionKeyOpaque"):
            continue  # cannot be set again
        kept = {k: v for k, v in cookie.items() if k in COOKIE_FIELDS and _typed(v, COOKIE_FIELDS[k])}
        if for_restore:
            if kept.pop("session", False) or kept.get("expires", -1) < 0:
                kept.pop("expires", None)
        out.append(kept)
    return out


def _typed(value: object, kind) -> bool:
    return isinstance(value, bool) if kind is bool else isinstance(value, kind) and not isinstance(value, bool)


def _json_list(value: object, what: str) -> list:
    if not isinstance(value, list):
        raise InvalidState(f"{what}: a list")
    return value


def _key_path(value: object, *, nullable: bool) -> object:
    if (value is None and nullable) or isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        return value
    raise InvalidState("a keyPath is a string or a list of strings")


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidState("expected a boolean")
    return value


def _name(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidState("a name is a string")
    return value


def valid_origin_entry(raw: object) -> dict:
    """One origin's storage, shapes checked and unknown fields dropped (InvalidState otherwise)."""
    if not isinstance(raw, dict):
        raise InvalidState("an origin entry is an object")
    local = []
    for item in _json_list(raw.get("localStorage", []), "localStorage"):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("value"), str):
            raise InvalidState("a localStorage item is {name, value} strings")
        local.append({"name": item["name"], "value": item["value"]})
    databases = []
    for db in _json_list(raw.get("indexedDB", []), "indexedDB"):
        if not isinstance(db, dict):
            raise InvalidState("a database is an object")
        version = db.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 2 ** 53:
            raise InvalidState("a database version is a positive integer")
        stores = []
        for store in _json_list(db.get("stores", []), "stores"):
            if not isinstance(store, dict):
                raise InvalidState("a store is an object")
            indexes = [{"name": _name(ix.get("name")), "keyPath": _key_path(ix.get("keyPath"), nullable=False),
                        "unique": _flag(ix.get("unique")), "multiEntry": _flag(ix.get("multiEntry"))}
                       for ix in _json_list(store.get("indexes", []), "indexes") if isinstance(ix, dict)]
            records = []
            for record in _json_list(store.get("records", []), "records"):
                if not isinstance(record, dict) or "value" not in record:
                    raise InvalidState("a record is {key, value}")
                records.append({"key": record.get("key"), "value": record["value"]})
            stores.append({"name": _name(store.get("name")), "keyPath": _key_path(store.get("keyPath"), nullable=True),
                           "autoIncrement": _flag(store.get("autoIncrement")), "indexes": indexes,
                           "records": records})
        databases.append({"name": _name(db.get("name")), "version": version, "stores": stores})
    return {"origin": as_origin(raw.get("origin")), "localStorage": local, "indexedDB": databases}
