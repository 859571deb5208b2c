"""The Think stage's engines, chosen by `config.sampling.engine`.

  static      `sampling.Sampler`: batches of rows decoded to their longest
              row (the reference).
  continuous  `sampling_continuous.ContinuousSampler`: a pool of decode
              slots refilled as rows finish, over a paged KV cache.

Both follow `sampling.Engine` and give the same traces for the same
settings, up to float rounding. The continuous engine runs every family
(Gemma2, Llama-3, GPT-2: `decode_models.decoder_for`); a model it has no
paged decode path for (another module, a wrapped one, Gemma with a vision
encoder) gets the static engine, with a logged warning.
"""

from __future__ import annotations

from absl import logging
from jax.sharding import Mesh
import ml_collections

from tpt_jax import decode_models
from tpt_jax import models
from tpt_jax import sampling
from tpt_jax import sampling_continuous
from tpt_jax import tokenizer as tokenizer_lib


def make_sampler(sampling_config: ml_collections.ConfigDict,
                 model: models.Model, params: models.Params, *,
                 tokenizer: tokenizer_lib.Tokenizer | None = None,
                 mesh: Mesh | None = None) -> sampling.Sampler:
  """The engine `sampling_config.engine` names ('static' or 'continuous').

  Both have `Sampler`'s API (`sample`, `sample_all`, `with_params`) and give
  the same traces for the same settings, up to float rounding; so a model
  without a paged decode path (`decode_models.decoder_for`: every Gemma2,
  Llama-3 and GPT-2 model has one) gets the static engine, with a logged
  warning.

  Raises:
    ValueError: an unknown engine name.
  """
  engine = sampling_config.get('engine', 'static')
  if engine not in sampling.ENGINES:
    raise ValueError(f'config.sampling.engine={engine!r} must be one of '
                     f'{sampling.ENGINES}.')
  if engine == 'continuous':
    try:
      decode_models.decoder_for(model)
    except ValueError as error:
      logging.warning('sampling: %s Using the static engine.', error)
    else:
      return sampling_continuous.ContinuousSampler(
          model, params, tokenizer=tokenizer, mesh=mesh)
  return sampling.Sampler(model, params, tokenizer=tokenizer, mesh=mesh)
