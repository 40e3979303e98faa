"""``--workers N`` (N > 1): a small parent process in front of N worker processes.

Each worker is a full proxy (``llm-proxy --worker-of-supervisor``, the same arguments) that
listens on the one port with ``SO_REUSEPORT``: the kernel spreads new connections over them. The
supervisor holds no request state. It

- replaces a worker that dies (logged; the delay before the new one doubles while workers keep
  dying young, so a crash loop does not spin),
- passes SIGTERM / SIGINT on (each worker drains) and exits 0 once every worker stopped cleanly,
- on SIGHUP checks the config file once and, if it loads, passes SIGHUP on (each worker reloads);
  a bad file is refused here with one log line and no worker is bothered,
- gives the workers a private metrics directory (prometheus-client's multiprocess mode) so that
  one ``/metrics`` scrape, answered by any worker, counts every worker; removed at exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time

from prometheus_client import multiprocess

from .config import ConfigError, Settings, load_config
from .observe.logs import ALWAYS

__all__ = ["METRICS_DIR_ENV", "STOP_SIGNALS", "Supervisor", "refusal", "run"]

log = logging.getLogger("proxy.supervisor")

#: prometheus-client reads this at import: set for the workers before they start.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: A worker that lived shorter than this died young: the next start waits longer.
YOUNG_S = 10.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
#: Signals a worker handles (stop, stop, reload).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Exit code of a worker that cannot start (bad config, port taken): starting again won't help.
EXIT_UNUSABLE = 2


def refusal(settings: Settings, count: int) -> str | None:
    """Why ``count`` workers cannot run this config, or ``None``."""
    if settings.jobs.enabled and not settings.jobs_on_redis:
        return (
            f"{count} workers need a shared job store: each worker would keep its own in memory, "
            "so a job accepted by one would be unknown to the next connection. Set redis.url "
            "(jobs use Redis), or jobs.enabled: false, or run one worker"
        )
    if settings.batches.mode == "emulate" and not settings.jobs_on_redis:
        return (
            f"{count} workers need a shared store for /v1/files and /v1/batches: each worker "
            "would keep its own in memory, so a file uploaded to one would be unknown to the "
            "next connection. Set redis.url (they use Redis, as jobs do), or batches.mode: "
            "passthrough, or run one worker"
        )
    return None


def run(settings: Settings, *, host: str, port: int, count: int, config_path: str | None) -> int:
    """Start ``count`` workers and supervise them until a stop signal; the exit code."""
    if settings.cache.enabled and settings.cache.backend == "memory":
        log.info(
            "cache.backend is memory: each of the %d workers has its own cache (split %d ways, "
            "cache.max_bytes each); use the redis backend for one shared cache",
            count,
            count,
        )
    if len(settings.upstreams) > 1 and not settings.redis.url:
        log.warning(
            "without redis.url each of the %d workers remembers only the responses it made: "
            "GET/DELETE /v1/responses/{id} on another worker goes to the default upstream",
            count,
        )
    metrics_dir = tempfile.mkdtemp(prefix="llm-proxy-metrics-")
    try:
        command = [sys.executable, "-m", "proxy", "--worker-of-supervisor"]
        command += ["--host", host, "--port", str(port)]
        if config_path is not None:
            command += ["--config", config_path]
        env = {**os.environ, METRICS_DIR_ENV: metrics_dir}
        supervisor = Supervisor(
            command,
            count=count,
            env=env,
            config_path=config_path,
            metrics_dir=metrics_dir,
            stop_timeout_s=settings.server.shutdown_timeout_s,
        )
        return asyncio.run(supervisor.run())
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


class Supervisor:
    def __init__(
        self,
        command: list[str],
        *,
        count: int,
        env: dict[str, str],
        config_path: str | None,
        metrics_dir: str,
        stop_timeout_s: float,
    ) -> None:
        self.command = command
        self.count = count
        self.env = env
        self.config_path = config_path
        self.metrics_dir = metrics_dir
        self.stop_timeout_s = stop_timeout_s
        self.procs: dict[int, asyncio.subprocess.Process] = {}  # slot -> running worker
        self.stopping = asyncio.Event()
        self.failed = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        log.info(
            "supervisor (pid %d) starting %d workers; their metrics are kept in %s",
            os.getpid(),
            self.count,
            self.metrics_dir,
        )
        slots = [asyncio.create_task(self._keep(slot)) for slot in range(self.count)]
        try:
            await self.stopping.wait()
            # Workers drain for up to their shutdown timeout; then they are killed.
            done, pending = await asyncio.wait(slots, timeout=self.stop_timeout_s + 15)
            for slot, proc in self.procs.items():
                log.error("worker %d (pid %d) did not stop in time: killed", slot, proc.pid)
                proc.kill()
            results = [task.result() for task in done] + await asyncio.gather(*pending)
        finally:
            for task in slots:
                task.cancel()
            await asyncio.gather(*slots, return_exceptions=True)
        if self.failed:
            return EXIT_UNUSABLE
        clean = all(code == 0 for code in results)
        log.info("supervisor: every worker stopped%s", "" if clean else " (not all cleanly)")
        return 0 if clean else 1

    def stop(self, sig: signal.Signals) -> None:
        if not self.stopping.is_set():
            log.info("supervisor: %s, passing it on to %d workers", sig.name, len(self.procs))
        self.stopping.set()
        self._signal_all(sig)

    def reload(self) -> None:
        try:
            problem = refusal(load_config(self.config_path), self.count)
        except ConfigError as exc:
            problem = "; ".join(str(exc).splitlines())
        if problem is not None:
            log.error(
                "reload refused, the workers keep the previous config: %s", problem, extra=ALWAYS
            )
            return
        log.info("supervisor: config file checked, reloading %d workers", len(self.procs))
        self._signal_all(signal.SIGHUP)

    def _signal_all(self, sig: signal.Signals) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(sig)

    async def _keep(self, slot: int) -> int:
        """Keep one worker running until the stop; its last exit code."""
        backoff = FIRST_BACKOFF_S
        first = True
        while True:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *self.command, env=self.env, preexec_fn=_block_stop_signals
            )
            self.procs[slot] = proc
            log.info("worker %d started (pid %d)", slot, proc.pid)
            if self.stopping.is_set():  # a stop that came while it was starting
                proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
            del self.procs[slot]
            multiprocess.mark_process_dead(proc.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
            if self.stopping.is_set():
                return code
            if first and code == EXIT_UNUSABLE:
                log.error("worker %d cannot start (exit %d): stopping", slot, code)
                self.failed = True
                self.stop(signal.SIGTERM)
                return code
            first = False
            if time.monotonic() - started >= YOUNG_S:
                backoff = FIRST_BACKOFF_S
            delay, backoff = backoff, min(backoff * 2, MAX_BACKOFF_S)
            log.warning(
                "worker %d (pid %d) exited with %s; starting a new one in %.1f s",
                slot,
                proc.pid,
                _describe(code),
                delay,
            )
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
                return code
            except TimeoutError:
                pass


def _block_stop_signals() -> None:
    """In the new worker, before it runs: a signal that arrives while it starts waits until it
    can act on it (``cli.serve`` unblocks them once its handlers are in place) instead of
    killing it with the default action."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"
