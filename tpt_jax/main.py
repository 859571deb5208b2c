r"""The tpt_jax program: `python -m tpt_jax.main --config=configs/x.py`.

  python -m tpt_jax.main --config=configs/gemma2_9b.py \
      --config.checkpoint.path=/ckpts/gemma2-9b --workdir=/tmp/tpt

Parses and validates the config (an unknown field or a value of the wrong
type is refused by name), prints the resolved config, then runs (or resumes)
in --workdir what `config.mode` names: the Think -> Prune -> Train -> Evaluate
rounds ('tpt', `tpt_jax.loop`) or SERT's self-training and distillation
stages ('sert', `tpt_jax.sert`).
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging

from ml_collections import config_flags

from tpt_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path of an ml_collections config file (configs/*.py).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for every output of the run (rounds, '
    'checkpoints, summaries). Overrides config.workdir.')
_DRY_RUN = flags.DEFINE_bool(
    'dry_run', False, 'Only validate and print the resolved config.')


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
    print(f'Unknown config field in {" ".join(bad)}: {message}',
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
  # pylint: disable=g-import-not-at-top
  if config.mode == 'sert':
    from tpt_jax import sert as runner
  else:
    from tpt_jax import loop as runner
  # pylint: enable=g-import-not-at-top
  try:
    runner.run(config)
  except config_lib.ConfigError as e:
    print(f'Invalid config: {e}', file=sys.stderr)
    sys.exit(2)


def main(argv):
  if not flags.FLAGS['verbosity'].present:
    # orbax and tfds log every file they write at INFO; progress bars and
    # printed round results say what a user needs. --verbosity=0 brings the
    # logs back.
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None:
    raise app.UsageError('--config=configs/<name>.py is required.')
  try:
    config = resolve_config(_CONFIG.value, _WORKDIR.value)
  except config_lib.ConfigError as e:
    print(f'Invalid config: {e}', file=sys.stderr)
    sys.exit(2)
  print('Resolved config:\n' + json.dumps(config.to_dict(), indent=2,
                                          default=str), flush=True)
  if _DRY_RUN.value:
    return
  if config.workdir:
    pathlib.Path(config.workdir).mkdir(parents=True, exist_ok=True)
  run(config)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
