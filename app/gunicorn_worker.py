"""The gunicorn worker class for WEB_CONCURRENCY > 1 (see workers.py). Imported by gunicorn only:
it needs gunicorn and uvloop."""

from __future__ import annotations

import queue
import signal

from aiohttp.worker import GunicornUVLoopWebWorker


class UVLoopWorker(GunicornUVLoopWebWorker):  # type: ignore[misc]  # gunicorn is untyped
    """aiohttp's uvloop worker, without a gap at start: uvloop sees a signal only while its
    loop runs, and before the worker sets its handlers the master's (copied by the fork) queue
    signals where nobody reads them. A SIGTERM that arrived in that time (while the worker
    imports the app: seconds) was lost, and the worker served on until gunicorn killed it at
    the graceful timeout. Such signals are now kept and handled as soon as the loop runs."""

    _STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

    def init_signals(self) -> None:
        inherited = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)  # the master's copy
        super().init_signals()
        self._early_signals: list[int] = []
        for signum in self._STOP_SIGNALS:
            # Python's handler also wakes uvloop's once the loop runs: nothing is lost later.
            signal.signal(signum, self._keep_signal)
        signal.siginterrupt(signal.SIGTERM, False)  # as aiohttp's worker set it; signal() reset it
        pending = getattr(inherited, "SIG_QUEUE", None)  # what reached us before our handlers
        while pending is not None:
            try:
                signum = pending.get_nowait()
            except queue.Empty:
                break
            if signum in self._STOP_SIGNALS:
                self._early_signals.append(signum)

    def _keep_signal(self, signum: int, frame: object) -> None:
        self._early_signals.append(signum)

    def run(self) -> None:
        self.loop.call_soon(self._handle_early_signals)
        super().run()

    def _handle_early_signals(self) -> None:
        for signum in self._early_signals:
            if signum == signal.SIGTERM:
                self.handle_exit(signum, None)
            else:
                self.handle_quit(signum, None)
