r"""Runs one float32 forward pass of any supported checkpoint; saves the logits.

  python scripts/check_logits.py --checkpoint=/ckpts/gemma2-2b \
      --config=configs/gemma2_2b.py --tokens=2,651,1234 --output=logits.npy

Use it to check a conversion: the same weights in another format (orbax
flat / nested, Hugging Face safetensors, an export by `tpt_jax.export`) must
give the same logits. Any family (Gemma2, Llama-3, GPT-2). The architecture
comes from `config.json` for a Hugging Face directory, from `--config`
(default: configs/gemma2_2b.py) otherwise. Saves a float32 array
`[len(tokens), vocab]`.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(_REPO, 'configs', 'gemma2_2b.py'),
    'Config naming the architecture (ignored for Hugging Face directories).')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Checkpoint directory.',
                                  required=True)
_TOKENS = flags.DEFINE_list('tokens', ['2', '651', '1234'],
                            'Comma-separated token ids.')
_OUTPUT = flags.DEFINE_string('output', 'logits.npy', 'Where to save (.npy).')


def compute_logits(config, checkpoint: str, tokens: list[int]) -> np.ndarray:
  """float32 logits `[len(tokens), vocab]` of one forward pass."""
  from tpt_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from tpt_jax import sharding  # pylint: disable=g-import-not-at-top
  with config.unlocked():
    config.model.param_dtype = 'float32'
    config.model.compute_dtype = 'float32'
    config.checkpoint.path = checkpoint
  mesh = sharding.make_mesh(config.mesh)
  model, params = checkpoints.model_and_params(config, mesh)
  vocab_size = model.config.num_embed
  bad = [t for t in tokens if not 0 <= t < vocab_size]
  if bad:
    raise ValueError(f'--tokens: ids {bad} are outside the vocabulary '
                     f'[0, {vocab_size}).')
  logits = model.apply(params, np.asarray([tokens], np.int32)).logits
  return np.asarray(logits[0], np.float32)


def main(argv):
  del argv
  try:
    tokens = [int(t) for t in _TOKENS.value]
  except ValueError:
    sys.exit(f'--tokens={",".join(_TOKENS.value)} must be integers.')
  if not tokens:
    sys.exit('--tokens is empty.')
  logits = compute_logits(_CONFIG.value, _CHECKPOINT.value, tokens)
  np.save(_OUTPUT.value, logits)
  print(f'Saved logits {logits.shape} to {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main)
