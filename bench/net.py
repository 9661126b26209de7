"""The harness's two TCP questions: which port is free, and does something listen there."""

from __future__ import annotations

import socket


def free_port(host: str) -> int:
    """A port free on `host` now (the OS picks it; another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_listening(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when a TCP connect to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
