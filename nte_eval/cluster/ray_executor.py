"""Running a suite's items on a Ray cluster (``--executor ray``; the extra ``pip install -e ".[ray]"``).

One actor per GPU (``num_gpus=1``), or per ``threads`` CPUs on a cluster without GPUs, loads the suite's models and
data once. The driver hands each actor one group of items at a time (one task per encoder setting and shard, so that
a shard is read and encoded once), in the order ``schedule.Schedule`` gives, so that each setting's attacks are
fitted once. A fit that saves a state is sent to the driver, kept under the run folder's ``fits/`` and handed with their
next group of its setting to the other actors (an actor restarted after a crash has lost those it was handed after
its start, and fits them again: the same states, some time lost). The driver writes every finished item's file, so
the run folder needs no shared file system. An actor that dies is restarted and its group retried; every random
choice is keyed per sample, so a retried group gives the same files. Ray is imported here only, when this executor
runs.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nte_eval.cluster.processes import start_worker
from nte_eval.cluster.schedule import Schedule
from nte_eval.errors import NTEError
from nte_eval.evaluate.fits import FitStore, State
from nte_eval.evaluate.items import Done, Work
from nte_eval.evaluate.suite import Suite

INSTALL = 'pip install -e ".[ray]" (in nte-eval\'s folder), or pip install "ray>=2.60"'
RETRIES = 3  # restarts of a dead actor, and retries of the group it held


def import_ray():  # noqa: ANN201 (the module, typed by Ray)
    """Ray, or an NTEError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise NTEError(f"--executor ray needs Ray, which is not installed: {INSTALL}.") from None
    return ray


def check_address(address: str | None, timeout: float = 10.0) -> None:
    """A HOST:PORT ``--address`` must accept a connection within ``timeout`` seconds (Ray itself would retry for
    minutes); 'auto' and None are left to Ray (a running local cluster, or a new one)."""
    if address in (None, "auto") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise NTEError(f"--address {address!r}: expected HOST:PORT of a Ray head node (as `ray start --head` prints "
                       f"it), or auto.")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise NTEError(f"--address {address}: no Ray head node answers there ({e}); start one with `ray start --head "
                       f"--port {port}` on {host}, or check the address.") from None


class ItemActor:
    """Holds a ``Worker`` (the suite's models and data, loaded once) in a Ray actor process."""

    def __init__(self, suite: Suite, device: str, batch: int | None, threads: int, fits: dict[str, State]):
        cache = Path(tempfile.mkdtemp(prefix="nte-eval-clean-"))  # this actor's clean outputs per shard
        self.worker = start_worker(suite, cache, device, batch, threads, FitStore(None, fits))

    def run(self, work: list[Work], fits: dict[str, State] | None = None) -> tuple[list[Done], dict[str, State]]:
        """The finished items, and the states of the attacks fitted for them (for the driver to keep); ``fits``:
        states other actors made since this one started (restored instead of fitted again)."""
        self.worker.inputs.fits.learn(fits or {})
        return list(self.worker.run(work)), self.worker.inputs.fits.take_new()


def run_on_ray(suite: Suite, work: list[Work], on_done: Callable[[Done], None], fits: FitStore,
               address: str | None, device: str, batch: int | None, threads: int,
               log: Callable[[str], None]) -> None:
    """Run ``work`` on the Ray cluster at ``address`` (None: a local one for this process), handing each finished
    item to ``on_done`` in the driver. The actors start with every fit ``fits`` holds and send back the ones they
    made, which the driver saves there (so a restarted driver's actors restore them)."""
    ray = import_ray()
    check_address(address)
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     **({} if address else {"num_cpus": os.cpu_count()}))
        except ConnectionError as e:
            raise NTEError(f"--address {address}: Ray found no cluster there ({e}); start one with `ray start "
                           f"--head`.") from None
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device.startswith("cuda") else 0
    if device.startswith("cuda") and not gpus:
        raise NTEError("--executor ray --device cuda: the Ray cluster has no GPUs; use --device cpu.")
    count = gpus or max(1, int(resources.get("CPU", 1)) // threads)
    schedule = Schedule(work)
    count = min(count, len(schedule.todo))
    remote = ray.remote(max_restarts=RETRIES, max_task_retries=RETRIES)(ItemActor)
    known = fits.read_all()
    actors = [remote.options(num_cpus=threads, num_gpus=1 if gpus else 0).remote(
        suite, "cuda" if gpus else "cpu", batch, threads, known) for _ in range(count)]
    log(f"Ray: {count} actor(s) ({'1 GPU' if gpus else f'{threads} CPU(s)'} each) for {len(work)} item(s) in "
        f"{len(schedule.todo)} group(s) (encoder setting x shard)")
    has = [set(fits.known) for _ in actors]  # the fit states each actor holds
    made: dict[tuple, dict[str, State]] = {}  # a setting -> the states the actors made for it
    pending: dict[Any, tuple[int, list]] = {}  # a running task (its ObjectRef) -> its actor's number and group
    idle = list(range(count))
    try:
        while True:
            for a in list(idle):
                group = schedule.take(a)
                if group is not None:
                    idle.remove(a)
                    new = {k: v for k, v in made.get(group[0][1], {}).items() if k not in has[a]}
                    has[a] |= new.keys()
                    pending[actors[a].run.remote(group, new)] = a, group
            if not pending:
                break
            [ready], _ = ray.wait(list(pending), num_returns=1)
            a, group = pending.pop(ready)
            done, states = ray.get(ready)
            for key, state in states.items():
                fits.put(key, state)
            made.setdefault(group[0][1], {}).update(states)
            has[a] |= states.keys()
            for item in done:
                on_done(item)
            schedule.finished(group)
            idle.append(a)
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, NTEError):  # the item's own error (a corrupt image, say): as the local run says it
            raise NTEError(f"{cause} (on a Ray actor; finished items are kept: rerun with --resume)") from None
        raise NTEError(f"Ray: an item failed ({type(cause or e).__name__}: {cause or e}; an actor that died was "
                       f"restarted and its group retried up to {RETRIES} times); finished items are kept: rerun "
                       f"with --resume.") from None
    finally:
        for actor in actors:
            ray.kill(actor)
