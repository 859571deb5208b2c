r"""The tpt_jax program: `python -m tpt_jax.main --config=configs/x.py`.

  python -m tpt_jax.main --config=configs/gemma2_9b.py \
      --config.checkpoint.path=/ckpts/gemma2-9b --workdir=/tmp/tpt

Parses and validates the config (an unknown field or a value of the wrong
type is refused by name), prints the resolved config, then runs (or resumes)
in --workdir what `config.mode` names (`tpt_jax.experiments`): the Think ->
Prune -> Train -> Evaluate rounds ('tpt', `experiments/tpt.py`) or SERT's
self-training and distillation stages ('sert', `experiments/sert.py`).
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags
from absl import logging

from ml_collections import config_flags

from tpt_jax import config as config_lib
from tpt_jax import experiments
from tpt_jax import sharding
from tpt_jax import sources

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path of an ml_collections config file (configs/*.py).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for every output of the run (rounds, '
    'checkpoints, summaries). Overrides config.workdir.')
_DRY_RUN = flags.DEFINE_bool(
    'dry_run', False, 'Only validate and print the resolved config.')
_TOPOLOGY = flags.DEFINE_string(
    'topology', None, 'With --dry_run: also compile the config\'s programs '
    'for this TPU slice (e.g. v5e-16) and print the plan, as '
    '`python -m tpt_jax.plan` does; exit 3 when a program does not fit.')


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a one-line error for a bad config override."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an unknown field, with a "did you
    # mean" hint in the message.
    message = str(e.args[0] if e.args else e).strip('\'"')
    message = message.replace('\\n', ' ').replace('\n', ' ').replace(
        "\\'", "'")
    bad = [a for a in argv[1:] if a.startswith('--config.')]
    if 'get_config' in message:
      config_file = next((a.split('=', 1)[1] for a in argv[1:]
                          if a.startswith('--config=')), '?')
      print(f'Config file {config_file} defines no get_config(); a config '
            'file is a Python module whose get_config() returns the config '
            '(see configs/tiny.py).', file=sys.stderr)
    elif bad:
      print(f'Unknown config field in {" ".join(bad)}: {message}',
            file=sys.stderr)
    else:
      config_file = next((a.split('=', 1)[1] for a in argv[1:]
                          if a.startswith('--config=')), '?')
      print(f'Config file {config_file}: unknown config field {message}',
            file=sys.stderr)
  except flags.Error as e:
    print(f'Invalid flag: {e}', file=sys.stderr)
  sys.exit(2)


def resolve_config(config, workdir: str | None):
  """Applies --workdir and validates; returns the config (still locked)."""
  if workdir:
    config.workdir = workdir
  config_lib.validate(config)
  return config


def run(config) -> None:
  """Runs what `config.mode` names (resuming its workdir)."""
  try:
    experiments.get(config.mode).run(config)
  except config_lib.ConfigError as e:
    _fail(f'Invalid config: {e}')
  except sources.MalformedInputError as e:
    _fail(f'Bad input data: {e}')
  except FileNotFoundError as e:
    _fail(f'Missing input: {e}')


def _fail(message: str) -> None:
  """A user-facing error: one message, exit 2; the traceback only when
  --verbosity asks for debug logs (>= 1)."""
  if flags.FLAGS['verbosity'].present and flags.FLAGS.verbosity >= 1:
    logging.exception(message)
  print(message, file=sys.stderr)
  sys.exit(2)


def main(argv):
  if not flags.FLAGS['verbosity'].present:
    # orbax and tfds log every file they write at INFO; progress bars and
    # printed round results say what a user needs. --verbosity=0 brings the
    # logs back.
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    loaded = _CONFIG.value
    if loaded is None:
      raise app.UsageError('--config=configs/<name>.py is required.')
    config = resolve_config(loaded, _WORKDIR.value)
  except OSError as e:
    # config_flags defers a load failure (e.g. no such file) to first use.
    reason = [line.strip() for line in str(e).split('\n') if line.strip()]
    _fail(f'Cannot load --config: {reason[-1] if reason else e}')
  except config_lib.ConfigError as e:
    _fail(f'Invalid config: {e}')
  print('Resolved config:\n' + json.dumps(config.to_dict(), indent=2,
                                          default=str), flush=True)
  if _DRY_RUN.value:
    if _TOPOLOGY.value:
      from tpt_jax import plan  # pylint: disable=g-import-not-at-top
      sys.exit(plan.run(config, _TOPOLOGY.value))
    return
  if _TOPOLOGY.value:
    _fail('--topology goes with --dry_run (or use python -m tpt_jax.plan).')
  try:
    # Before anything touches a backend: jax.distributed needs it so.
    sharding.maybe_initialize_distributed(config.mesh)
  except sharding.DistributedError as e:
    print(f'Cannot start: {e}', file=sys.stderr)
    sys.exit(2)
  run(config)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
