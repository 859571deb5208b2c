"""Export to Hugging Face: every family loads in `transformers` and computes
our logits; LoRA adapters are merged first; OUT is protected and written
atomically."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpt_jax import checkpoints
from tpt_jax import config as config_lib
from tpt_jax import export
from tpt_jax import models
from tpt_jax import train
from gemma import peft  # pylint: disable=g-bad-import-order

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

_REPO = pathlib.Path(__file__).resolve().parents[1]
_TOKENS = (np.arange(2, 30)[None] * 7 % 500 + 3).astype(np.int32)


def _config(variant):
  config = config_lib.base_config()
  config.model.variant = variant
  config.model.param_dtype = config.model.compute_dtype = 'float32'
  config.train = train.default_config()
  return config


def _random_params(abstract, seed=0):
  rng = np.random.default_rng(seed)
  def leaf(path, x):
    name = jax.tree_util.keystr(path)
    if name.endswith("'scale']"):
      return (1 + rng.normal(0, 0.2, x.shape)).astype(np.float32)
    scale = 0.5 / np.sqrt(x.shape[-2]) if x.ndim >= 2 else 0.1
    return rng.normal(0, scale, x.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(leaf, abstract)


def _make_run(workdir, config, params):
  """A run directory as the loop leaves it after round 1."""
  checkpoints.save_orbax(params,
                         workdir / 'round_1' / 'train' / 'final_params')
  (workdir / 'config.json').write_text(json.dumps(config.to_dict()))


def _transformers_logits(path):
  model = transformers.AutoModelForCausalLM.from_pretrained(
      path, attn_implementation='eager', dtype=torch.float32).eval()
  with torch.no_grad():
    return model(torch.tensor(_TOKENS, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize('variant', ['gemma2_tiny', 'llama3_tiny',
                                     'gpt2_tiny'])
def test_round_export_loads_in_transformers_with_our_logits(variant,
                                                            tmp_path):
  config = _config(variant)
  model = models.build_model(config.model)
  params = _random_params(model.abstract_params())
  _make_run(tmp_path / 'run', config, params)
  output = export.export_run(workdir=tmp_path / 'run', round_index=1,
                             output=tmp_path / 'hf', max_shard_bytes=100_000)
  assert len(list(output.glob('*.safetensors'))) > 1
  index = json.loads((output / 'model.safetensors.index.json').read_text())
  assert set(index['weight_map'].values()) == {
      f.name for f in output.glob('*.safetensors')}
  ours = np.asarray(model.apply(params, _TOKENS).logits)
  np.testing.assert_allclose(_transformers_logits(output), ours, atol=1e-4,
                             rtol=0)
  # Our loader reads the export back bit-exactly.
  config.checkpoint.path = str(output)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1),
                           ('data', 'fsdp', 'tensor'))
  _, loaded = checkpoints.model_and_params(config, mesh)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), params)


def test_lora_adapters_are_merged_before_export(tmp_path):
  config = _config('llama3_tiny')
  config.train.update(lora_rank=2, lora_alpha=4.0)
  model = models.build_model(config.model)
  base = _random_params(model.abstract_params(), seed=1)
  lora_model = train.training_model(model, config.train)
  abstract = jax.eval_shape(lambda: lora_model.module.init(
      jax.random.key(0), jnp.ones((1, 1), jnp.int32))['params'])
  adapters = _random_params(peft.split_params(abstract).lora, seed=2)
  checkpoints.save_orbax(base, tmp_path / 'base')
  checkpoints.save_orbax(adapters, tmp_path / 'adapters')
  config.checkpoint.path = str(tmp_path / 'base')
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'config.json').write_text(json.dumps(config.to_dict()))
  output = export.export_run(workdir=tmp_path / 'run',
                             params_dir=tmp_path / 'adapters',
                             output=tmp_path / 'hf')
  merged = train.merge_lora_params(base, adapters, scale=2.0)
  ours = np.asarray(model.apply(merged, _TOKENS).logits)
  np.testing.assert_allclose(_transformers_logits(output), ours, atol=1e-4,
                             rtol=0)
  # The adapters matter: the base alone computes something else.
  assert np.abs(np.asarray(model.apply(base, _TOKENS).logits) - ours).max(
  ) > 1e-2


def test_cli_refuses_a_non_empty_output_and_overwrites_atomically(tmp_path):
  config = _config('gpt2_tiny')
  model = models.build_model(config.model)
  _make_run(tmp_path / 'run', config,
            _random_params(model.abstract_params()))
  output = tmp_path / 'hf'
  output.mkdir()
  (output / 'stale.txt').write_text('an older export')

  def run(*extra):
    return subprocess.run(
        [sys.executable, '-m', 'tpt_jax.export',
         f'--workdir={tmp_path / "run"}', '--round=1', f'--output={output}',
         *extra], cwd=_REPO, capture_output=True, text=True, check=False,
        env={'PYTHONPATH': str(_REPO), 'PATH': '/usr/bin:/bin',
             'JAX_PLATFORMS': 'cpu'})

  refused = run()
  assert refused.returncode != 0
  assert 'is not empty; pass --overwrite' in refused.stderr
  assert [p.name for p in output.iterdir()] == ['stale.txt']
  done = run('--overwrite')
  assert done.returncode == 0, done.stderr
  assert not (output / 'stale.txt').exists()
  assert (output / 'config.json').exists()
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []
  missing = run('--overwrite', '--round=2')
  assert missing.returncode != 0
  assert "round_2/train/final_params' does not exist" in missing.stderr
  # Any params directory, with a config file naming the model.
  config_file = tmp_path / 'gpt2_tiny.py'
  config_file.write_text(
      'from tpt_jax import config as config_lib\n'
      'def get_config():\n'
      '  c = config_lib.base_config()\n'
      "  c.model.variant = 'gpt2_tiny'\n"
      '  return c\n')
  output = tmp_path / 'hf_from_params'
  from_params = subprocess.run(
      [sys.executable, '-m', 'tpt_jax.export',
       f'--params={tmp_path / "run" / "round_1" / "train" / "final_params"}',
       f'--config={config_file}', f'--output={output}'],
      cwd=_REPO, capture_output=True, text=True, check=False,
      env={'PYTHONPATH': str(_REPO), 'PATH': '/usr/bin:/bin',
           'JAX_PLATFORMS': 'cpu'})
  assert from_params.returncode == 0, from_params.stderr
  assert json.loads((output / 'config.json').read_text())['model_type'] == (
      'gpt2')


def test_tokenizer_files_ship_and_load_in_transformers(tmp_path):
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  hf_tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
  hf_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf_tokenizer.decoder = decoders.ByteLevel()
  hf_tokenizer.train_from_iterator(
      ['Tom has 3 apples and buys 5 more.'] * 10, trainer=trainers.BpeTrainer(
          vocab_size=300, show_progress=False,
          special_tokens=['<|begin_of_text|>', '<|end_of_text|>',
                          '<|start_header_id|>', '<|end_header_id|>',
                          '<|eot_id|>'],
          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  hf_tokenizer.save(str(tmp_path / 'tokenizer.json'))
  config = _config('llama3_tiny')
  config.tokenizer.path = str(tmp_path / 'tokenizer.json')
  model = models.build_model(config.model)
  _make_run(tmp_path / 'run', config, _random_params(model.abstract_params()))
  output = export.export_run(workdir=tmp_path / 'run', round_index=1,
                             output=tmp_path / 'hf')
  assert (output / 'tokenizer.json').exists()
  loaded = transformers.AutoTokenizer.from_pretrained(output)
  assert loaded.bos_token == '<|begin_of_text|>'
  assert loaded.eos_token == '<|end_of_text|>'
  text = 'Tom buys 8 apples.'
  assert loaded.encode(text, add_special_tokens=False) == (
      hf_tokenizer.encode(text, add_special_tokens=False).ids)
