"""Cursor pages: iterating yields every item of every page, fetching the next page only when needed."""
from __future__ import annotations

from typing import AsyncIterator, Awaitable, Callable, Generator, Generic, Iterator, Optional, Protocol, TypeVar

from browserfleet._errors import BrowserfleetError

T = TypeVar("T")


class _Page(Protocol[T]):
    @property
    def data(self) -> list[T]: ...
    @property
    def next_cursor(self) -> Optional[str]: ...


def _next(page: _Page[T], seen: set[str]) -> str | None:
    cursor = page.next_cursor
    if cursor is not None:
        if cursor in seen:  # a server bug would otherwise loop forever
            raise BrowserfleetError(f"the API returned cursor {cursor!r} twice")
        seen.add(cursor)
    return cursor


class SyncCursorPage(Generic[T]):
    """The first page (fetched at once, so a bad key raises right away); iterate for every item."""

    def __init__(self, fetch: Callable[[Optional[str]], _Page[T]]) -> None:
        self._fetch = fetch
        first = fetch(None)
        self.data: list[T] = list(first.data)
        self.next_cursor: Optional[str] = first.next_cursor
        self._first = first

    def iter_pages(self) -> Iterator[_Page[T]]:
        page, seen = self._first, set[str]()
        while True:
            yield page
            cursor = _next(page, seen)
            if not cursor:
                return
            page = self._fetch(cursor)

    def __iter__(self) -> Iterator[T]:
        for page in self.iter_pages():
            yield from page.data


class AsyncCursorPager(Generic[T]):
    """`async for item in pager` yields every item; `await pager` gives the first page alone."""

    def __init__(self, fetch: Callable[[Optional[str]], Awaitable[_Page[T]]]) -> None:
        self._fetch = fetch

    def __await__(self) -> Generator[object, None, _Page[T]]:
        return self._fetch(None).__await__()

    async def iter_pages(self) -> AsyncIterator[_Page[T]]:
        page, seen = await self._fetch(None), set[str]()
        while True:
            yield page
            cursor = _next(page, seen)
            if not cursor:
                return
            page = await self._fetch(cursor)

    async def __aiter__(self) -> AsyncIterator[T]:
        async for page in self.iter_pages():
            for item in page.data:
                yield item
