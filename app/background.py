"""Background work tied to the app's life: started after startup, cancelled at cleanup."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def while_running(work: Callable[[web.Application], Coroutine[Any, Any, None]]) -> CleanupContext:
    """A cleanup_ctx entry that runs `work(app)` as a task for as long as the app runs."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(work(app))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context
