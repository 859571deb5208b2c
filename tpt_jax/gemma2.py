"""Gemma2's Hugging Face mapping (the model itself is `gm.nn.Transformer`).

The same interface as `tpt_jax.llama` and `tpt_jax.gpt2`: architecture from
and to `config.json`, and our param tree from and to HF tensor names, so that
`tpt_jax.checkpoints` loads and writes every family alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tpt_jax import hf_layout
from tpt_jax import _gemma_compat  # pylint: disable=unused-import  # Must precede gemma.
from gemma import gm  # pylint: disable=g-bad-import-order

FAMILY = 'gemma2'
MODEL_TYPE = 'gemma2'
# The embedding is tied; HF may still store lm_head (equal to it).
IGNORED_HF_TENSORS = r'lm_head\.weight'

TransformerConfig = gm.nn.config.TransformerConfig

# (Hugging Face norm name, our norm name) in every layer.
_NORM_NAMES = (
    ('input_layernorm', 'pre_attention_norm'),
    ('post_attention_layernorm', 'post_attention_norm'),
    ('pre_feedforward_layernorm', 'pre_ffw_norm'),
    ('post_feedforward_layernorm', 'post_ffw_norm'),
)


def _dims(config: TransformerConfig) -> hf_layout.DecoderDims:
  return hf_layout.DecoderDims(
      embed_dim=config.embed_dim, hidden_dim=config.hidden_dim,
      num_heads=config.num_heads, num_kv_heads=config.num_kv_heads,
      head_dim=config.head_dim)


def config_from_hf(config_json: dict[str, Any]) -> TransformerConfig:
  """The gemma TransformerConfig equal to a Hugging Face Gemma2 config."""
  try:
    embed_dim = config_json['hidden_size']
    num_heads = config_json['num_attention_heads']
    head_dim = config_json.get('head_dim', embed_dim // num_heads)
    num_layers = config_json['num_hidden_layers']
    scalar = config_json.get('query_pre_attn_scalar', head_dim)
    normalisation = gm.nn.config.QueryPreAttentionNormalisation
    if scalar == head_dim:
      query_norm = normalisation.BY_ONE_OVER_SQRT_HEAD_DIM
    elif scalar == embed_dim // num_heads:
      query_norm = normalisation.BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS
    else:
      raise ValueError(
          f'config.json: query_pre_attn_scalar={scalar} is neither head_dim '
          f'({head_dim}) nor hidden_size/num_attention_heads '
          f'({embed_dim // num_heads}); gemma supports only those.')
    rope = config_json.get('rope_theta', 10_000)
    attention_type = gm.nn.AttentionType
    return TransformerConfig(
        num_embed=config_json['vocab_size'],
        embed_dim=embed_dim,
        hidden_dim=config_json['intermediate_size'],
        num_heads=num_heads,
        head_dim=head_dim,
        num_kv_heads=config_json['num_key_value_heads'],
        final_logit_softcap=config_json.get('final_logit_softcapping'),
        use_post_attn_norm=True,
        use_post_ffw_norm=True,
        attention_types=(
            (attention_type.LOCAL_SLIDING, attention_type.GLOBAL)
            * ((num_layers + 1) // 2))[:num_layers],
        query_pre_attn_norm=query_norm,
        attn_logits_soft_cap=config_json.get('attn_logit_softcapping'),
        sliding_window_size=config_json.get('sliding_window', 4096),
        # Our tree layout for the gating matrix: [2, embed, hidden].
        transpose_gating_einsum=False,
        local_base_frequency=int(rope),
        global_base_frequency=int(rope),
    )
  except KeyError as e:
    raise ValueError(f'config.json lacks the field {e.args[0]!r}.') from e


def hf_config_json(config: TransformerConfig) -> dict[str, Any]:
  """The Hugging Face `config.json` fields of a Gemma2 architecture."""
  return {
      'architectures': ['Gemma2ForCausalLM'],
      'model_type': MODEL_TYPE,
      'vocab_size': config.num_embed,
      'hidden_size': config.embed_dim,
      'intermediate_size': config.hidden_dim,
      'num_hidden_layers': config.num_layers,
      'num_attention_heads': config.num_heads,
      'num_key_value_heads': config.num_kv_heads,
      'head_dim': config.head_dim,
      'query_pre_attn_scalar': int(round(config.query_pre_attn_scalar() ** -2)),
      'final_logit_softcapping': config.final_logit_softcap,
      'attn_logit_softcapping': config.attn_logits_soft_cap,
      'sliding_window': config.sliding_window_size,
      'rope_theta': config.global_base_frequency,
      'hidden_activation': 'gelu_pytorch_tanh',
      'rms_norm_eps': 1e-6,
      'tie_word_embeddings': True,
      'pad_token_id': 0, 'eos_token_id': 1, 'bos_token_id': 2,
  }


def expected_hf_shapes(tensors: dict[str, Any], config: TransformerConfig
                       ) -> dict[str, tuple[int, ...]]:
  """The tensors (and shapes) a HF Gemma2 checkpoint of `config` holds."""
  del tensors  # One naming for every Gemma2 checkpoint.
  d = config.embed_dim
  shapes = {'model.embed_tokens.weight': (config.num_embed, d),
            'model.norm.weight': (d,)}
  for i in range(config.num_layers):
    hf = f'model.layers.{i}.'
    shapes.update(hf_layout.decoder_layer_hf_shapes(hf, _dims(config)))
    for norm, _ in _NORM_NAMES:
      shapes[f'{hf}{norm}.weight'] = (d,)
  return shapes


def hf_readers(tensors: dict[str, np.ndarray], config: TransformerConfig
               ) -> dict[str, hf_layout.Reader]:
  """Our param name -> (shape, shard reader) over the HF tensors."""
  if config.transpose_gating_einsum:
    raise ValueError('The Hugging Face mapping holds the gating matrix as '
                     '[2, embed, hidden] (transpose_gating_einsum=False).')
  readers = {
      'embedder/input_embedding': hf_layout.view(
          tensors['model.embed_tokens.weight']),
      'final_norm/scale': hf_layout.view(tensors['model.norm.weight'])}
  for i in range(config.num_layers):
    hf, ours = f'model.layers.{i}.', f'layer_{i}/'
    readers.update(hf_layout.decoder_layer_readers(tensors, hf, ours,
                                                   _dims(config)))
    for hf_norm, our_norm in _NORM_NAMES:
      readers[f'{ours}{our_norm}/scale'] = hf_layout.view(
          tensors[f'{hf}{hf_norm}.weight'])
  return readers


def to_hf(flat: dict[str, np.ndarray], config: TransformerConfig
          ) -> dict[str, np.ndarray]:
  """Our flat params -> HF tensors (the inverse of `hf_readers`; also takes
  the transposed gating layout of the library's 9B / 27B configs)."""
  if config.transpose_gating_einsum:  # The 9B / 27B library layout.
    flat = {name: (x.swapaxes(1, 2) if name.endswith('mlp/gating_einsum')
                   else x) for name, x in flat.items()}
  hf = {'model.embed_tokens.weight': flat['embedder/input_embedding'],
        'model.norm.weight': flat['final_norm/scale']}
  for i in range(config.num_layers):
    prefix, ours = f'model.layers.{i}.', f'layer_{i}/'
    hf.update(hf_layout.decoder_layer_to_hf(flat, ours, prefix,
                                            _dims(config)))
    for hf_norm, our_norm in _NORM_NAMES:
      hf[f'{prefix}{hf_norm}.weight'] = flat[f'{ours}{our_norm}/scale']
  return hf
