"""The Celery broker of the native distributed Airflow: Debian's ``redis-server`` on 127.0.0.1.

It requires a password (``requirepass``, written to a 0600 config file, never on a command
line) and keeps its queues in an append-only file, so messages that were queued but not
yet run survive a restart. Started in a session of its own with a pid file, and adopted by
the next start if it is still running and answers (see :mod:`delivery.devenv.processes`).
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from delivery.devenv import processes


class RedisError(RuntimeError):
    pass


def ping(port: int, password: str, *, timeout: float = 2.0) -> bool:
    """AUTH then PING over RESP; True when the server answers PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(
                f"*2\r\n$4\r\nAUTH\r\n${len(password)}\r\n{password}\r\n*1\r\n$4\r\nPING\r\n".encode()
            )
            answer = b""
            while answer.count(b"\r\n") < 2 and not answer.startswith(b"-"):
                chunk = sock.recv(200)
                if not chunk:
                    break
                answer += chunk
    except OSError:
        return False
    return answer.startswith(b"+OK") and b"+PONG" in answer


class RedisServer:
    def __init__(self, *, folder: Path, port: int, password: str) -> None:
        self.folder = folder
        self.port = port
        self.password = password
        self.pid_file = folder / "redis.pid"
        self.log_file = folder / "redis.log"

    def url(self, db: int = 0) -> str:
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{db}"

    def pid(self) -> int | None:
        return processes.adoptable(self.pid_file)

    def start(self, env: Mapping[str, str], *, timeout: float = 30.0) -> RedisServer:
        if self.pid() is not None and ping(self.port, self.password):
            return self
        processes.stop_sessions([self.pid_file], timeout=10.0)  # not answering, or left over by a crash
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "redis.conf"
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode yes\ndaemonize no\n"
            f'dir {self.folder}\nappendonly yes\nsave ""\nrequirepass {self.password}\n'
        )
        proc = processes.spawn(
            [binary, str(config)], env=env, pid_file=self.pid_file, log_file=self.log_file, cwd=self.folder
        )
        deadline = time.monotonic() + timeout
        while not ping(self.port, self.password):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RedisError(f"redis-server did not start on 127.0.0.1:{self.port}; see {self.log_file}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        processes.stop_sessions([self.pid_file], timeout=10.0)
