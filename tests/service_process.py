"""Test helper: start a real service (moto, swtpm) as a child process on loopback, wait until it listens, stop it."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServiceProcess:
    """``argv`` running as a child until :meth:`stop`; the constructor returns once ``port`` on
    127.0.0.1 accepts connections, and raises RuntimeError (with the child's stderr tail) when the
    child exits or does not listen within ``timeout`` seconds."""

    def __init__(self, name: str, argv: list[str], port: int, *, env=None,
                 timeout: float = 30) -> None:
        self.name = name
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited: "
                                   + self.process.stderr.read().decode(errors="replace")[-2000:])
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{name} did not listen within {timeout:g} s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stderr.close()
