"""Run a suite: every (designated model x encoder setting x attack) cell, every model evaluated, tidy results."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from nte_eval.certify.degradation import degradation_warnings
from nte_eval.certify.fidelity import CERT_COLUMNS, violations
from nte_eval.certify.run import certify_steps, certify_suite
from nte_eval.cluster.processes import run_in_processes
from nte_eval.cluster.ray_executor import run_on_ray
from nte_eval.data.images import ImageSet
from nte_eval.data.sources import source
from nte_eval.errors import NTEError
from nte_eval.evaluate.fits import FitStore
from nte_eval.evaluate.items import Done, Worker
from nte_eval.evaluate.labels import compact, knowledge_of, target_of
from nte_eval.evaluate.merge import merge_tables, read_plan
from nte_eval.evaluate.run_folder import (
    ANGLES,
    CERTIFICATES,
    CLEAN,
    FITS,
    N_EXAMPLES,
    PLAN,
    SPECTRA,
    WARNINGS,
    atomic_write,
    environment,
    example_file,
    key_fingerprint,
    save_examples,
)
from nte_eval.evaluate.shards import Item, owns, shard_ranges, verified_items
from nte_eval.evaluate.spectra import spectrum_rows
from nte_eval.evaluate.store import COLUMNS, ResultStore, cell_key, replacing
from nte_eval.evaluate.suite import Suite
from nte_eval.evaluate.suite_file import import_plugins
from nte_eval.models.handle import ModelHandle
from nte_eval.progress import Progress

SHARD_OVERWRITE = ("--shard and --overwrite do not go together: the processes of one run share its folder. Delete the "
                   "folder (or choose another --out) before starting them.")


def run_suite(suite: Suite, out: str | Path, device: str = "cpu", batch_size: int | None = None,
              progress: bool | Progress = True, resume: bool = False, overwrite: bool = False,
              log: Callable[[str], None] = print, attacks: bool = True, shard: tuple[int, int] | None = None,
              executor: str = "local", address: str | None = None, threads: int = 1,
              workers: int = 1) -> pd.DataFrame | None:
    """Evaluate every cell of the suite, then its ``certify`` section; write ``results.csv``/``.parquet``,
    ``samples.csv``, ``worst_case.csv``, ``warnings.json``, ``manifest.json`` (and the certification files) under
    ``out``. With ``resume``, finished items are skipped; ``attacks=False`` runs the certification alone.

    Work is done in items, one per (designated model, encoder setting, attack setting, shard of ``shard_size``
    samples), each stored as a checksummed file under ``shards/``; the tables are merged from them at the end
    (``merge``). ``shard=(I, N)`` runs only this process's share of the items (``--shard I/N``) in a folder other
    processes of the same suite may fill too, and merges only when every item is there; it returns None otherwise.
    ``executor='ray'`` runs the items on the Ray cluster at ``address`` (None: a local one), ``threads`` CPU threads
    per actor on a cluster without GPUs; this process writes every file. ``workers`` > 1 runs the local items in
    that many new processes of ``threads`` threads each (this process writes their files; a script that calls this
    with ``workers`` > 1 needs ``if __name__ == "__main__":`` around the call, since each worker imports it).

    A certificate that a certified Lipschitz bound does not keep is a bug: after every file is written, it raises
    NTEError naming how many failed and the first one. With ``overwrite``, a previous run in ``out`` stays untouched
    until this one is complete (built beside it, then swapped in).

    ``progress``: show bars, or a ``Progress`` whose overall bar this run extends by its items and certification
    steps (the command line plans the report on it too); this function does not close a ``Progress`` it is given."""
    if shard is not None and overwrite:
        raise NTEError(SHARD_OVERWRITE)
    if executor not in ("local", "ray") or (executor == "ray" and shard is not None):
        raise NTEError(f"executor {executor!r}: use 'local' or 'ray' (--executor ray runs every item on the cluster: "
                       f"it does not go with --shard).")
    if address and executor != "ray":
        raise NTEError("--address goes with --executor ray (the Ray head node to run on).")
    if workers > 1 and executor != "local":
        raise NTEError(f"--workers {workers} is for the local executor; on Ray, each actor takes --threads CPUs of the "
                       f"cluster (leave --workers out).")
    bars = progress if isinstance(progress, Progress) else Progress(progress)
    try:
        with replacing(Path(out), overwrite and not resume, log) as work:
            return _run_items(suite, work, device, batch_size, bars, resume, overwrite, log, attacks, shard, executor,
                              address, threads, workers)
    finally:
        if bars is not progress:
            bars.close()


def _run_items(suite: Suite, out: Path, device: str, batch_size: int | None, progress: Progress, resume: bool,
               overwrite: bool, log: Callable[[str], None], attacks: bool, shard: tuple[int, int] | None,
               executor: str, address: str | None, threads: int, workers: int) -> pd.DataFrame | None:
    """``run_suite`` in the folder ``out`` it writes to."""
    t0 = time.time()
    worker = Worker(suite, out / CLEAN, device, batch_size, progress, log, FitStore(out / FITS))
    store = ResultStore(out, suite.config_hash(), resume=resume, overwrite=overwrite, join=shard is not None,
                        log=log)
    data, kind = worker.data, source(suite.data.source)
    work = worker.work() if attacks else []
    cert_item = None if suite.certify is None else Item("certify", (certify_key(suite),), 0, 0)
    plan = [w[0].record() for w in work] + ([cert_item.record()] if cert_item else [])
    if not attacks and resume and (out / PLAN).is_file():  # `certify --resume` of a run: its cells stay in the plan
        plan = [it for it in json.loads((out / PLAN).read_text())["items"] if it["kind"] == "cell"] + plan
    with atomic_write(out / PLAN) as tmp:
        tmp.write_text(json.dumps({"config_hash": suite.config_hash(), "metric": kind.metric(suite.data.task),
                                   "items": plan, "plugins": suite.plugins, "base": str(suite.base.resolve()),
                                   "manifest": _manifest(suite, worker)}, indent=1, default=str))
    mine = [w for w in work if shard is None or owns(w[0], shard)]
    todo = [w for w in mine if not store.is_done(w[0].id)]
    save_examples(example_file(out), data.images[:N_EXAMPLES])
    if attacks:
        cells = len(worker.encoders) * len(worker.attack_settings)
        shards = len(shard_ranges(len(data), suite.shard_size))
        log(f"{len(worker.encoders)} encoder setting(s) x {len(worker.attack_settings)} attack setting(s) = {cells} "
            f"cells" + (f" x {shards} shards of {suite.shard_size}" if shards > 1 else "")
            + f", {len(worker.evaluated)} models, {len(data)} {kind.unit}"
            + (f"; this process (--shard {shard[0]}/{shard[1]}) runs {len(mine)} of {len(work)} items" if shard else "")
            + (f"; {len(mine) - len(todo)} items already done" if len(todo) < len(mine) else ""))
    certifies = cert_item is not None and (shard is None or owns(cert_item, shard))
    cert_steps = certify_steps(suite, worker.handles, worker.evaluated) if certifies else 0
    cert_done = certifies and store.is_done(cert_item.id)
    progress.start(len(mine) + cert_steps, done=len(mine) - len(todo) + (cert_steps if cert_done else 0))
    def finished(done: Done) -> None:  # the process that holds the run folder writes every item's file
        for key, images in done.examples:
            save_examples(example_file(out, *key), images)
        store.add(done.item, done.frame, done.record)
        progress.advance()

    if executor == "ray" and todo:
        run_on_ray(suite, todo, finished, worker.inputs.fits, address, device, batch_size, threads, log)
    elif workers > 1 and todo:
        run_in_processes(suite, todo, finished, out, device, batch_size, threads, workers, log)
    else:
        for done in worker.run(todo):
            finished(done)
    if certifies:
        certified = data.subset(slice(0, min(len(data), suite.certify.samples)))  # held in memory: bounded
        _certify(suite, worker.handles, worker.evaluated, certified, out, worker.batch, store, cert_item, progress,
                 log)
    with atomic_write(out / SPECTRA) as tmp:
        pd.concat([spectrum_rows(n, worker.handles[n]) for n in worker.evaluated]).to_csv(tmp, index=False)
    if shard is not None:
        missing = len({it["id"] for it in plan} - set(verified_items(out, log)))
        if missing > 0:
            log(f"--shard {shard[0]}/{shard[1]}: this process's items are done; {missing} item(s) of other processes "
                f"are not there yet. Once every process has finished: nte-eval merge {out}")
            return None
    return finish_run(out, log, round(time.time() - t0, 3), resume)


def finish_run(out: Path, log: Callable[[str], None], total_seconds: float | None = None,
               resumed: bool = False, plugins: bool = False) -> pd.DataFrame:
    """Merge the item files into the run's tables, run the sanity checks (and the degradation study's), write
    warnings.json and the manifest; what ends every run and what `nte-eval merge DIR` does. A certificate that a
    certified Lipschitz bound does not keep is then an NTEError (a bug in nte-eval). ``plugins``: import the suite's
    plugins first (a process that did not load the suite)."""
    if plugins:  # `nte-eval merge` in a fresh process: the suite's own attacks, which the tables name
        plan = read_plan(out)
        import_plugins(plan.get("plugins", []), Path(plan.get("base", ".")))
    results, warnings = merge_tables(out, log, total_seconds, resumed)
    if (out / ANGLES).exists():
        warnings += degradation_warnings(pd.read_csv(out / ANGLES))
    for w in warnings:
        log(f"warning [{w['check']}]: {w['message']}")
    with atomic_write(out / WARNINGS) as tmp:
        tmp.write_text(json.dumps(warnings, indent=2))
    path = out / CERTIFICATES
    broken = violations(pd.read_csv(path)) if path.exists() else pd.DataFrame(columns=CERT_COLUMNS)
    if len(broken):  # after every file is written, so the run stays readable
        raise NTEError(f"{len(broken)} certificate(s) of a certified Lipschitz bound failed (first: "
                       f"{broken.iloc[0].designated}, sample {broken.iloc[0]['sample']}, "
                       f"{broken.iloc[0].lipschitz_source}): a bug in nte-eval; see {out / CERTIFICATES} "
                       f"(column passed) and report it.")
    return results


def _manifest(suite: Suite, worker: Worker) -> dict[str, Any]:
    """What the manifest says about the run (merge adds its status, timings and the encoders' subspaces). The key
    (the suite's seed) regenerates every NTE's noise: files hold its fingerprint, never the key."""
    data, public, kind = worker.data, worker.public, source(suite.data.source)
    return {"suite": suite.name, "config_hash": suite.config_hash(),
            "key_fingerprint": key_fingerprint(suite.keys[0]),
            **({"key_fingerprints": [key_fingerprint(k) for k in suite.keys]} if len(suite.keys) > 1 else {}),
            "device": worker.device, "batch_size": worker.batch, "shard_size": suite.shard_size,
            "config": suite.model_dump(exclude={"seed", "seeds"}), "environment": environment(),
            "data": {"source": suite.data.source, "split": suite.data.split, "n": len(data),
                     "modality": data.modality, "metric": kind.metric(suite.data.task), "transform": data.transform,
                     "shape": list(data.images.shape[1:]), "label_free": data.label_free,
                     # label-free: no class rate to compare with (taken as 0, the stricter threshold for "held")
                     "chance": None if data.label_free else float(torch.bincount(data.labels).max()) / len(data)},
            "public": None if public is None else {"n": len(public), **suite.public_config().model_dump()},
            "fit_samples": {"limit": suite.fit_samples, "ntes": len(worker.nte_fit),
                            "public": None if worker.public_fit is None else len(worker.public_fit)},
            "models": {name: h.describe() for name, h in worker.handles.items()},
            "attacks": [{"type": a, "params": p, "knowledge": knowledge_of(a, compact(p)),
                         "target": target_of(a, compact(p))}
                        for a, p in worker.attack_settings]}


def certify_key(suite: Suite) -> str:
    """The cell key of the suite's ``certify`` section (one item)."""
    return cell_key("certify", compact(suite.certify.model_dump()), "", "")


def _certify(suite: Suite, handles: dict[str, ModelHandle], evaluated: list[str], data: ImageSet, out: Path,
             batch: int, store: ResultStore, item: Item, progress: Progress, log: Callable[[str], None]) -> None:
    """The suite's ``certify`` section as one item (its summary rows in the item file)."""
    if store.is_done(item.id):
        return
    tc = time.time()
    rows, _ = certify_suite(suite, handles, evaluated, data, out, batch, progress, log)
    store.add(item, pd.DataFrame(rows, columns=COLUMNS), {"seconds": round(time.time() - tc, 3)})
