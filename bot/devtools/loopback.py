"""Loopback networking for the embedded homeservers: free ports."""

from __future__ import annotations

import socket


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    There is a window between closing this socket and a server binding the port;
    :meth:`bot.devtools.homeserver.EmbeddedHomeserver.start` picks another port if it
    loses that race.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
