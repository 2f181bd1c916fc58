"""Fitted attacks kept on disk (the run folder's ``fits/``): an attack whose ``state()`` saves what its fit learned
(a trained network) is fitted once per (designated model, encoder setting, attack setting) and run; a resumed run,
another ``--shard`` process, a ``--workers`` process or a Ray actor restores it instead of fitting again."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch

from nte_eval.evaluate.run_folder import PARTIAL, atomic_write

State = dict[str, Any]


class FitStore:
    """Saved fits by key, in ``folder`` (None: in memory only, as on a Ray actor, whose driver writes them);
    ``known``: states read elsewhere (the driver's, handed to an actor)."""

    def __init__(self, folder: Path | None, known: dict[str, State] | None = None):
        self.folder, self.known, self.new = folder, dict(known or {}), {}

    @staticmethod
    def key(setting: str, attack: str, params: dict[str, Any]) -> str:
        text = json.dumps([setting, attack, params], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def get(self, key: str, keep: bool = True) -> State | None:
        """The saved state, or None (never saved, or a damaged file: the attack is fitted again). ``keep=False``: not
        held in memory once read (a large state, read again from the folder when asked for again)."""
        if key in self.known:
            return self.known[key]
        if self.folder is not None and (self.folder / f"{key}.pt").is_file():
            try:
                state = torch.load(self.folder / f"{key}.pt", map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
                return None
            if keep:
                self.known[key] = state
            return state
        return None

    def put(self, key: str, state: State, keep: bool = True) -> None:
        """Save ``state``; ``keep=False``: not held in memory where a folder holds it."""
        if keep or self.folder is None:
            self.known[key] = self.new[key] = state
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.folder / f"{key}.pt") as tmp:
                torch.save(state, tmp)

    def learn(self, states: dict[str, State]) -> None:
        """Hold ``states`` made elsewhere (another Ray actor's, handed on by the driver), to restore from."""
        self.known.update(states)

    def take_new(self) -> dict[str, State]:
        """The states saved since the last call (what an actor hands its driver)."""
        new, self.new = self.new, {}
        return new

    def read_all(self) -> dict[str, State]:
        """Every state that reads back from the folder (what a driver hands its actors)."""
        if self.folder is not None and self.folder.is_dir():
            for path in self.folder.glob("*.pt"):
                if PARTIAL not in path.name:
                    self.get(path.stem)
        return dict(self.known)
