"""Killing Ray actors' processes the way a preempted node or the OOM killer does (SIGKILL), for the tests."""

from __future__ import annotations

import os
import signal
import threading
import time


def process_id(actor) -> int:
    """The pid of ``actor``'s process, once it answers (a worker Ray is restarting answers when it is back)."""
    import ray

    while True:
        try:
            return ray.get(actor.__ray_call__.remote(lambda instance: os.getpid()))
        except ray.exceptions.ActorUnavailableError:
            time.sleep(0.5)


def kill(actor) -> int:
    """SIGKILL ``actor``'s process now; its pid."""
    pid = process_id(actor)
    os.kill(pid, signal.SIGKILL)
    return pid


def kill_after(actor, seconds: float) -> threading.Timer:
    """SIGKILL ``actor``'s process ``seconds`` from now, whatever it is doing then (join the timer)."""
    timer = threading.Timer(seconds, os.kill, (process_id(actor), signal.SIGKILL))
    timer.start()
    return timer
