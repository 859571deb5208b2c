"""Experiments: what `python -m tpt_jax.main` runs, by `config.mode`.

Each experiment is a module here with `run(config) -> summary`, composed from
the stage functions of `tpt_jax.stages`:

  tpt    Think -> Prune -> Train -> Evaluate rounds (`experiments/tpt.py`).
  sert   self-training on zero-shot latent reasoning, then distillation from
         a teacher (`experiments/sert.py`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

MODES = ('tpt', 'sert')


def get(mode: str) -> ModuleType:
  """The experiment module of `config.mode`."""
  if mode not in MODES:
    raise ValueError(f'config.mode={mode!r} is not one of {", ".join(MODES)}.')
  return importlib.import_module(f'{__name__}.{mode}')
