"""The suite's own Redis helper: it cleans up after itself and never hangs on a mute server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.support.redis_server import RedisServer, wait_for_ping


def test_close_kills_the_server_and_removes_its_directory() -> None:
    server = RedisServer()
    server.start()
    proc = server.proc
    assert proc is not None and os.path.isdir(server.dir)
    server.close()
    assert server.proc is None and proc.poll() is not None
    assert not os.path.exists(server.dir)


def test_wait_for_ping_gives_up_on_a_server_that_never_answers() -> None:
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with socket.socket() as mute:  # accepts connections (backlog), never replies
            mute.bind(("127.0.0.1", 0))
            mute.listen(16)
            started = time.monotonic()
            with pytest.raises(RuntimeError, match="did not start"):
                wait_for_ping(mute.getsockname()[1], alive, timeout_s=1)
            assert time.monotonic() - started < 5
    finally:
        alive.kill()
        alive.wait(5)
