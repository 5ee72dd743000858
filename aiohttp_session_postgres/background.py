"""Background work tied to an aiohttp app's life, for `app.cleanup_ctx`: started at startup,
cancelled and awaited at cleanup."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def while_running(work: Callable[[], Coroutine[Any, Any, None]]) -> CleanupContext:
    """A cleanup_ctx entry that runs `work()` as a task for as long as the app runs."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(work())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context
