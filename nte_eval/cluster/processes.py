"""Running a suite's items in several local processes (``--workers N``): one machine's cores used by processes of
``--threads`` threads each, where one process with more threads would be slower (small models spend their time in
per-call overhead, not in the maths a second thread shares).

Each worker process loads the suite's models and data once and runs whole groups of items, one group per (encoder
setting, shard). A free worker takes the next group of the setting it holds, else of a setting no other worker
holds, so that a setting's NTEs and fitted attacks are made once where there are as many settings as workers. The
workers keep fitted attacks and clean outputs in the run folder's ``fits/`` and ``clean/``, as the local run does,
and send every finished item to this process, which writes its file. Every random choice is keyed per sample, so
the results are those of one process. A worker that dies ends the run with an error; the finished items are kept
for ``--resume``.
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from nte_eval.errors import NTEError
from nte_eval.evaluate.fits import FitStore
from nte_eval.evaluate.items import Done, Work, Worker
from nte_eval.evaluate.run_folder import CLEAN, FITS
from nte_eval.evaluate.suite import Suite
from nte_eval.evaluate.suite_file import import_plugins

RESUME = "finished items are kept: rerun with --resume"


def groups(work: list[Work]) -> list[list[Work]]:
    """The items of each (encoder setting, shard), in the order of ``work``."""
    by: dict[tuple, list[Work]] = {}
    for w in work:
        by.setdefault((w[1], w[0].start), []).append(w)
    return list(by.values())


def next_group(todo: list[list[Work]], held: tuple | None, others: set[tuple]) -> list[Work] | None:
    """Take the first group of the setting ``held``, else of a setting not in ``others`` (held by other workers),
    else the first one; None when none is left."""
    for wanted in (lambda key: key == held, lambda key: key not in others, lambda key: True):
        for i, group in enumerate(todo):
            if wanted(group[0][1]):
                return todo.pop(i)
    return None


def serve(conn: Connection, suite: Suite, out: Path, device: str, batch: int | None, threads: int) -> None:
    """A worker process: load the suite once, then run each group of items it is sent until it is sent None,
    answering ("done", item) per finished item and ("idle", None) per group, or ("error", message) and exit.
    Ctrl-C is the driver's to handle: it stops the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            import_plugins(suite.plugins, suite.base)  # the suite's own attacks and encoders, in this process too
            worker = Worker(suite, out / CLEAN, device, batch, log=lambda _: None, fits=FitStore(out / FITS))
            while (work := pickle.loads(conn.recv_bytes())) is not None:
                for done in worker.run(work):
                    conn.send_bytes(pickle.dumps(("done", done)))
                conn.send_bytes(pickle.dumps(("idle", None)))
    except NTEError as e:
        conn.send_bytes(pickle.dumps(("error", str(e))))
    except Exception:  # a bug: the driver shows the worker's traceback
        conn.send_bytes(pickle.dumps(("bug", traceback.format_exc())))
    finally:
        conn.close()


def run_in_processes(suite: Suite, work: list[Work], on_done: Callable[[Done], None], out: Path, device: str,
                     batch: int | None, threads: int, workers: int, log: Callable[[str], None]) -> None:
    """Run ``work`` in ``workers`` new processes of ``threads`` threads each, handing each finished item to
    ``on_done`` in this process as it arrives."""
    todo = groups(work)
    count = min(workers, len(todo))
    log(f"{count} worker process(es), {threads} thread(s) each, for {len(work)} item(s) in {len(todo)} group(s) "
        f"(encoder setting x shard)")
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch threads or locks forked
    started: dict[Connection, multiprocessing.Process] = {}
    running: dict[Connection, list[Work]] = {}
    try:
        for _ in range(count):
            mine, theirs = context.Pipe()
            process = context.Process(target=serve, args=(theirs, suite, out, device, batch, threads))
            process.start()
            theirs.close()
            started[mine] = process
            running[mine] = next_group(todo, None, {g[0][1] for g in running.values()})
            mine.send_bytes(pickle.dumps(running[mine]))
        while running:
            for conn in wait(list(running)):
                _receive(conn, started[conn], running, todo, on_done)
    finally:
        for conn, process in started.items():
            conn.close()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()


def _receive(conn: Connection, process: multiprocessing.Process, running: dict[Connection, list[Work]],
             todo: list[list[Work]], on_done: Callable[[Done], None]) -> None:
    """Handle one message of a worker: a finished item, a finished group (the next one sent, or None), or its end."""
    try:
        kind, payload = pickle.loads(conn.recv_bytes())
    except EOFError:
        process.join()
        group = running[conn]
        raise NTEError(f"a worker process died (exit code {process.exitcode}) while running {len(group)} item(s) of "
                       f"{group[0][0].cell[0]} {group[0][0].cell[1]} (out of memory? try fewer --workers); "
                       f"{RESUME}.") from None
    if kind == "done":
        on_done(payload)
    elif kind == "idle":
        nxt = next_group(todo, running[conn][0][1], {g[0][1] for c, g in running.items() if c is not conn})
        conn.send_bytes(pickle.dumps(nxt))
        if nxt is None:
            del running[conn]
        else:
            running[conn] = nxt
    elif kind == "error":
        raise NTEError(f"{payload} (in a worker process; {RESUME})")
    else:
        raise RuntimeError(f"a worker process failed ({RESUME}):\n{payload}")
