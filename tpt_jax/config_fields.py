"""What every config section shares: the error type and field helpers.

A leaf module (it imports no other `tpt_jax` module), so that every stage
module can raise `ConfigError` and declare optional fields while
`tpt_jax.config` imports the stages' `default_config()`s: no import circle.
"""

from __future__ import annotations

from typing import Any

import ml_collections

DTYPES = ('bfloat16', 'float32', 'float16')
CHECKPOINT_FORMATS = ('auto', 'orbax', 'safetensors', 'random')


class ConfigError(ValueError):
  """A config value that is not allowed; the message names the field."""


def optional(field_type: type) -> Any:
  """A field that defaults to None but is type-checked when overridden.

  (A new placeholder each call: a shared one would link the fields.)
  """
  return ml_collections.config_dict.placeholder(field_type)


def check_choice(value: Any, name: str, choices: tuple[Any, ...]) -> None:
  """Raises ConfigError unless `value` (of field `config.<name>`) is one of
  `choices`."""
  if value not in choices:
    raise ConfigError(
        f'config.{name}={value!r} is not one of '
        f'{", ".join(str(c) for c in choices)}.')


def check_at_least(value: Any, name: str, minimum: float) -> None:
  """Raises ConfigError unless `value` (of `config.<name>`) is >= minimum."""
  if not value >= minimum:
    raise ConfigError(f'config.{name}={value!r} must be >= {minimum}.')
