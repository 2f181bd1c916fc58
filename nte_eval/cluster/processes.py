"""Running a suite's items in several local processes (``--workers N``): one machine's cores used by processes of
``--threads`` threads each, where one process with more threads would be slower (small models spend their time in
per-call overhead, not in the maths a second thread shares).

Each worker process loads the suite's models and data once and runs whole groups of items, one group per (encoder
setting, shard), handed out by ``schedule.Schedule`` so that each setting's attacks are fitted once. The workers keep
fitted attacks and clean outputs in the run folder's ``fits/`` and ``clean/``, as the local run does, and send every
finished item to this process, which writes its file. Every random choice is keyed per sample, so the results are
those of one process. A worker that dies or fails ends the run with an error; every item that finished is kept for
``--resume``.
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from nte_eval.cluster.schedule import Schedule
from nte_eval.errors import NTEError
from nte_eval.evaluate.fits import FitStore
from nte_eval.evaluate.items import Done, Work, Worker
from nte_eval.evaluate.run_folder import CLEAN, FITS
from nte_eval.evaluate.suite import Suite
from nte_eval.evaluate.suite_file import import_plugins

RESUME = "finished items are kept: rerun with --resume"


def start_worker(suite: Suite, cache: Path, device: str, batch: int | None, threads: int, fits: FitStore) -> Worker:
    """A worker process's ``Worker``: ``threads`` torch and BLAS threads, the suite's plugins imported (its own
    attacks and encoders), its models and data loaded once; silent (the driver logs)."""
    torch.set_num_threads(threads)
    threadpool_limits(threads)
    import_plugins(suite.plugins, suite.base)
    return Worker(suite, cache, device, batch, log=lambda _: None, fits=fits)


def serve(conn: Connection, suite: Suite, out: Path, device: str, batch: int | None, threads: int) -> None:
    """A worker process: load the suite once, then run each group of items it is sent until it is sent None,
    answering ("done", item) per finished item and ("idle", None) per group; on an error ("error", message) or, for
    a bug, ("bug", traceback), and exit."""
    try:
        worker = start_worker(suite, out / CLEAN, device, batch, threads, FitStore(out / FITS))
        while (work := pickle.loads(conn.recv_bytes())) is not None:
            for done in worker.run(work):
                conn.send_bytes(pickle.dumps(("done", done)))
            conn.send_bytes(pickle.dumps(("idle", None)))
    except NTEError as e:
        conn.send_bytes(pickle.dumps(("error", str(e))))
    except Exception:
        conn.send_bytes(pickle.dumps(("bug", traceback.format_exc())))
    finally:
        conn.close()


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """Processes started inside ignore Ctrl-C from their first instruction: it is the driver's to handle (it stops
    them)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_in_processes(suite: Suite, work: list[Work], on_done: Callable[[Done], None], out: Path, device: str,
                     batch: int | None, threads: int, workers: int, log: Callable[[str], None]) -> None:
    """Run ``work`` in ``workers`` new processes of ``threads`` threads each, handing each finished item to
    ``on_done`` in this process as it arrives. A library caller's script needs ``if __name__ == "__main__":``
    around its call (each worker is a fresh interpreter that imports the script's main module)."""
    schedule = Schedule(work)
    count = min(workers, len(schedule.todo))
    log(f"{count} worker process(es), {threads} thread(s) each, for {len(work)} item(s) in {len(schedule.todo)} "
        f"group(s) (encoder setting x shard)")
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch threads or locks forked
    started: dict[Connection, multiprocessing.Process] = {}
    running: dict[Connection, list[Work]] = {}  # a worker -> its group
    waiting: list[Connection] = []  # workers with nothing to take until more attacks' fits are kept
    complete = False
    try:
        for _ in range(count):
            mine, theirs = context.Pipe()
            with sigint_ignored():
                process = context.Process(target=serve, args=(theirs, suite, out, device, batch, threads))
                process.start()
            theirs.close()
            started[mine] = process
            waiting.append(mine)
        try:
            _hand_out(schedule, waiting, running, started, on_done)
            while running:
                for conn in wait(list(running) + waiting):  # a waiting worker only speaks when it fails
                    if _receive(conn, started[conn], running.get(conn), on_done):
                        schedule.finished(running.pop(conn))
                        waiting.append(conn)
                        _hand_out(schedule, waiting, running, started, on_done)
        except BaseException:  # an error, or Ctrl-C: keep what the workers have sent so far
            _drain(list(running), on_done)
            raise
        complete = True
    finally:
        for conn, process in started.items():
            conn.close()
            if not complete:  # an error or Ctrl-C: the workers' groups are not needed any more
                process.kill()
            process.join(timeout=10)


def _hand_out(schedule: Schedule, waiting: list[Connection], running: dict[Connection, list[Work]],
              started: dict[Connection, multiprocessing.Process], on_done: Callable[[Done], None]) -> None:
    """Send a group to every waiting worker that can take one; stop the workers when no group is left."""
    for conn in list(waiting):
        group = schedule.take(conn)
        if group is None and schedule.todo:
            continue  # only groups with attacks still being fitted: wait for their owner
        waiting.remove(conn)
        try:
            conn.send_bytes(pickle.dumps(group))
        except OSError:  # the worker has ended: its own message, or its death, says why (nothing lost if stopping)
            if group is not None:
                _receive(conn, started[conn], group, on_done)
            continue
        if group is not None:
            running[conn] = group


def _receive(conn: Connection, process: multiprocessing.Process, group: list[Work] | None,
             on_done: Callable[[Done], None]) -> bool:
    """Handle one message of the worker running ``group`` (None: waiting for one): a finished item, or the end of the
    group (True); its error, bug or death raises."""
    try:
        kind, payload = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        process.join(timeout=10)
        code = process.exitcode
        why = (f"killed by signal {signal.Signals(-code).name}" + (" (out of memory? try fewer --workers)"
                                                                   if code == -signal.SIGKILL else "")
               if code is not None and code < 0 else f"exit code {code}; its own message is above")
        doing = ("before it was given work" if group is None else
                 f"while running {len(group)} item(s) of {group[0][0].cell[0]} {group[0][0].cell[1]}")
        raise NTEError(f"a worker process died ({why}) {doing}; {RESUME}.") from None
    if kind == "done":
        on_done(payload)
    elif kind == "error":
        raise NTEError(f"{payload} (in a worker process; {RESUME})")
    elif kind == "bug":
        raise RuntimeError(f"a worker process failed ({RESUME}):\n{payload}")
    return kind == "idle"


def _drain(conns: list[Connection], on_done: Callable[[Done], None]) -> None:
    """Keep the items other workers have already sent, before the run stops on an error."""
    for conn in conns:
        try:
            while conn.poll(0):
                kind, payload = pickle.loads(conn.recv_bytes())
                if kind == "done":
                    on_done(payload)
        except Exception:  # a worker gone, or an item that cannot be written: the first error is the one to raise
            continue
