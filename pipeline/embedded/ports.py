"""Loopback ports for embedded services (the Kafka broker, the provider simulator)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago.

    The socket is closed before the caller binds, so another process can take the port in
    between; callers that spawn a server on it should retry with a new port if the bind
    fails (``EmbeddedBroker`` does).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
