"""Graceful shutdown: on SIGTERM the service stops listening at once, so new connections are refused.

BentoML's workers share one listening socket, which its arbiter holds open until every
worker has exited. On SIGTERM uvicorn stops accepting and lets in-flight requests
finish, but a connection made meanwhile waits in the socket's backlog for the whole
drain and is then reset, never served. Shutting the shared socket down for reading
stops it listening for every process that holds it (Linux), so such a connection is
refused at once: clients and load balancers take that as "try elsewhere". Requests
already accepted run on their own sockets and finish.

BentoML signals its workers only when the whole server stops (`docker stop`, Kubernetes,
Ctrl+C), so one worker's SIGTERM stands for all of them.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from contextlib import suppress
from types import FrameType

import psutil


def stop_listening_on_sigterm() -> None:
    """Run `stop_listening` before the worker's own SIGTERM handler (uvicorn's drain).

    Does nothing where there is no such handler to chain to: off the main thread (an
    in-process ASGI app) or when SIGTERM has its default action (a plain script).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    drain = signal.getsignal(signal.SIGTERM)
    if not callable(drain):
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        stop_listening()
        drain(signum, frame)

    signal.signal(signal.SIGTERM, handle)


def stop_listening() -> None:
    """Shut down every listening TCP socket this process holds, for all processes sharing it."""
    for conn in psutil.Process().net_connections("tcp"):
        if conn.status != psutil.CONN_LISTEN or conn.fd < 0:
            continue
        with socket.socket(fileno=os.dup(conn.fd)) as listener, suppress(OSError):  # shut already
            listener.shutdown(socket.SHUT_RD)
