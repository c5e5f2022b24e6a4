"""Where cells run: in ``workers`` spawned processes or as Ray tasks. An executor only calls ``run(cell, env)``
somewhere and hands each result to ``finish`` in this process, so the driver alone writes the store and resume and
kill safety hold for every executor. Given a ``giabench.progress.Board``, each running cell reports its attack's
progress to it through a queue (``run(cell, env, reporter)``)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from giabench.errors import GiabenchError, first_line
from giabench.progress import Board, relay, reported

ADDRESS_TIMEOUT_S = 10.0  # how long a Ray cluster's address may take to accept a connection
_events = None  # in a worker process: the queue of its cells' progress events (None: nobody shows them)


def in_pool(todo: list, run, env, workers: int, finish, board: Board | None = None) -> None:
    """Cells in ``workers`` spawned processes. On any interruption the workers are terminated; a worker outlives a
    killed driver by at most a second (``_watch_parent``)."""
    context = multiprocessing.get_context("spawn")
    events = context.Queue() if board is not None else None
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start,
                               initargs=(os.getpid(), events))
    relaying = relay(events.get, board) if events is not None else None
    try:
        futures = {pool.submit(_in_worker, run, cell, env): cell for cell in todo}
        for future in as_completed(futures):
            try:
                result = future.result()
            except BrokenProcessPool:
                raise GiabenchError("a worker process died (out of memory?); the finished cells are stored: rerun "
                                    "to resume, with fewer --workers") from None
            finish(futures[future], result)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():
            child.terminate()
        raise
    else:
        pool.shutdown()  # the workers exit, flushing the events they queued, before the sentinel below is put
    finally:
        if relaying is not None:
            events.put(None)
            relaying.join(timeout=5)


def _in_worker(run, cell, env):
    """In a worker: ``run`` the cell, its progress sent to the driver's queue when it shows progress."""
    return reported(run, cell, env, _events.put if _events is not None else None)


def check_address(address: str | None) -> None:
    """Refuse, before any work, a Ray address that is malformed or where nothing accepts a connection within
    ``ADDRESS_TIMEOUT_S`` (``auto`` and ``ray://`` client addresses are left to Ray)."""
    if address is None or address == "auto" or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise GiabenchError(f"--address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise GiabenchError(f"--address {address}: no Ray cluster answers there ({why}); start one with ray start "
                            "--head, or leave out --address for a local one") from None


def on_ray(todo: list, run, env, address: str | None, finish, board: Board | None = None) -> None:
    """Each cell a Ray task reserving ``env.threads`` CPUs (and a GPU when cells run on CUDA); results stream back
    to this driver as they finish, and progress events through a Ray queue. A local cluster (``address`` None)
    listens on loopback only, without dashboard. The address was checked with the rest of the input
    (``check_address``, from the command's environment)."""
    try:
        import ray
    except ImportError:
        raise GiabenchError("--executor ray needs Ray: pip install -e '.[ray]'") from None
    if not ray.is_initialized():
        options = {"address": address} if address else {"num_cpus": os.cpu_count(), "_node_ip_address": "127.0.0.1"}
        try:
            ray.init(include_dashboard=False, log_to_driver=False, logging_level="error", **options)
        except (ConnectionError, RuntimeError) as exc:
            raise GiabenchError(f"--address {address or 'local'}: Ray could not start or join a cluster "
                                f"({first_line(exc) or type(exc).__name__})") from None
    from ray.util.queue import Queue

    events = Queue() if board is not None else None
    relaying = relay(events.get, board) if events is not None else None
    task = ray.remote(num_cpus=env.threads, num_gpus=1 if env.device.startswith("cuda") else 0,
                      max_retries=0)(_on_ray)
    pending = {task.remote(run, cell, env, events): cell for cell in todo}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                finish(pending.pop(ref), ray.get(ref))
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if relaying is not None:
            events.put(None)
            relaying.join(timeout=5)
            events.shutdown()


def _on_ray(run, cell, env, events):
    """A Ray task: ``run`` the cell, its progress put on the driver's Ray queue when it shows progress."""
    return reported(run, cell, env, events.put if events is not None else None)


def _worker_start(parent: int, events) -> None:
    """In a worker: leave Ctrl-C to the driver (which stops the workers), exit when the driver is gone, and keep the
    queue its cells' progress goes to."""
    global _events
    _events = events
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
