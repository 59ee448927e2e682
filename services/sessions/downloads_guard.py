"""Keeps a browser session's downloads in its own directory (the one warm_pool set at lease and
collects at the session's end), whatever download settings its client sends.

Only client → browser frames are looked at, and only those that could name a download setting:
the method's name in plain text, or any backslash (JSON escapes could spell it otherwise). Those
are parsed; a `Browser.setDownloadBehavior` or `Page.setDownloadBehavior` (also inside a
`Target.sendMessageToTarget`) is rewritten to the
session's directory (`deny` stays deny; `allow`, `allowAndName` and `default` become `allow` there,
so files keep the names pages gave them) and forwarded as re-serialized, so the browser reads
exactly what was checked. A checked frame that is not valid JSON, or has a key twice, is refused.
"""
import json

METHODS = frozenset({"Browser.setDownloadBehavior", "Page.setDownloadBehavior"})
INVALID = -32602


class _Duplicate(ValueError):
    pass


def _unique(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _Duplicate
    return dict(pairs)


def guard(data: str | bytes, downloads_path: str) -> tuple[str | bytes | None, str | None]:
    """(the frame for the browser, or None; an error answer for the client, or None)."""
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    if "DownloadBehavior" not in text and "\\" not in text:
        return data, None
    try:
        msg = json.loads(text, object_pairs_hook=_unique)
    except ValueError:
        return None, json.dumps({"id": None, "error": {"code": INVALID, "message": "not a CDP command "
                                                       "(invalid JSON, or a key given twice)"}})
    if isinstance(msg, dict) and msg.get("method") == "Target.sendMessageToTarget":  # a command inside a command
        params = msg.get("params")
        inner = params.get("message") if isinstance(params, dict) else None
        if not isinstance(inner, str):
            return data, None
        checked, refusal = guard(inner, downloads_path)
        if checked is None:
            return None, _error(msg, "the inner message is not a CDP command")
        if checked is inner:
            return data, None
        out = json.dumps({**msg, "params": {**params, "message": checked}})
        return (out if isinstance(data, str) else out.encode()), None
    if not isinstance(msg, dict) or msg.get("method") not in METHODS:
        return data, None
    params = msg.get("params")
    if params is not None and not isinstance(params, dict):
        return None, _error(msg, "params must be an object")
    params = dict(params or {})
    params.pop("downloadPath", None)
    if params.get("behavior") == "deny":
        params = {**params, "behavior": "deny"}
    else:
        params = {**params, "behavior": "allow", "downloadPath": downloads_path}
    out = json.dumps({**msg, "params": params})
    return (out if isinstance(data, str) else out.encode()), None


def _error(msg: dict, why: str) -> str:
    reply = {"id": msg.get("id"), "error": {"code": INVALID, "message": why}}
    if isinstance(msg.get("sessionId"), str):
        reply["sessionId"] = msg["sessionId"]
    return json.dumps(reply)
