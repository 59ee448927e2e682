"""What the sessions server's websockets need beyond uvicorn's defaults: secrets kept out of its
logs, and a close that reaches a client whose message was refused."""
import logging
import re
from urllib.parse import unquote

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class RedactTokens(logging.Filter):
    """Keeps secrets of URLs (the CDP `token`, /v1/connect's `api_key`) out of the server's
    access and websocket logs. A name is compared percent-decoded, as the query is parsed:
    `api%5Fkey=` authenticates too, so it must not be logged either."""
    PARAM = re.compile(r"([?&;])([^=&;\s\"'?]+)=([^\s&;\"']*)")
    SECRET = frozenset({"token", "api_key"})

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "=" in message:
            redacted = self.PARAM.sub(self._redact, message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True

    def _redact(self, match: re.Match) -> str:
        if unquote(match.group(2)).strip().lower() in self.SECRET:
            return f"{match.group(1)}{match.group(2)}=[redacted]"
        return match.group(0)


class ServerProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websocket protocol, except after refusing a message (1009, or any
    protocol error): uvicorn closes the socket at once with the rest of that message unread,
    so the kernel resets the connection and the client may never read the close frame. Here
    the close frame is followed by a half-close, and what still arrives is read and discarded
    (by the websockets parser) until the client closes, or the close timeout."""

    def handle_parser_exception(self) -> None:
        if self.close_sent:  # refused already: this is the rest of the message
            return
        close = self.conn.close_sent
        self.queue.put_nowait({"type": "websocket.disconnect", "code": close.code, "reason": close.reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)
