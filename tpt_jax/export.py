r"""Export a round's model (or any params) as a Hugging Face directory.

  python -m tpt_jax.export --workdir=DIR --round=N --output=OUT
  python -m tpt_jax.export --params=PARAMS_DIR --workdir=DIR --output=OUT
  python -m tpt_jax.export --params=ADAPTERS_DIR --base=BASE_DIR \
      --workdir=DIR --output=OUT
  python -m tpt_jax.export --params=PARAMS_DIR \
      --config=configs/llama3_2_1b.py --output=OUT

writes OUT/config.json, OUT/model-0000i-of-0000n.safetensors with
OUT/model.safetensors.index.json and the tokenizer files, which
`transformers.AutoModelForCausalLM.from_pretrained(OUT)` (and vLLM,
lm-evaluation-harness, the Hub) load, for every family (Gemma2, Llama,
GPT-2).

The run's config (`DIR/config.json`, or `--config=FILE.py`) names the
architecture: its Hugging Face checkpoint's `config.json` if it started from
one, else `config.model.variant`. A round's params are
`DIR/round_N/train/final_params` (LoRA already merged by the trainer); a
directory of LoRA adapters (e.g. `final_lora`) is merged into `--base` (or
the run's checkpoint) with the run's `lora_alpha / lora_rank` first.
Tokenizer files come from `config.tokenizer.path`, the run's checkpoint
directory, or `DIR/tokenizer.model` (toy runs).

OUT must not exist or be empty, unless `--overwrite`. The directory is
written next to OUT under a temporary name and renamed into place, so OUT is
never half-written. Params are gathered on the host: it needs host memory
for the whole model in its param dtype.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
from typing import Any

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import orbax.checkpoint as ocp

from tpt_jax import checkpoints
from tpt_jax import models
from tpt_jax import sharding as sharding_lib
from tpt_jax import tokenizer as tokenizer_lib
from tpt_jax import train as train_lib

CONFIG_FILE = 'config.json'  # The run's config in its workdir (loop.py's).
TOY_TOKENIZER_FILE = 'tokenizer.model'  # loop.py's, for toy runs.
# Tokenizer files of a Hugging Face directory, copied when present.
HF_TOKENIZER_FILES = ('tokenizer.json', 'tokenizer.model',
                      'tokenizer_config.json', 'special_tokens_map.json',
                      'vocab.json', 'merges.txt', 'generation_config.json')

Params = models.Params


class ExportError(ValueError):
  """Bad export input: named in the message."""


def round_params_dir(workdir: str | os.PathLike[str], round_index: int
                     ) -> pathlib.Path:
  """Where round N's final params are (round 0: the warm-up's)."""
  workdir = pathlib.Path(workdir)
  stage = 'warmup' if round_index == 0 else 'train'
  path = (workdir / f'round_{round_index}' / stage /
          train_lib.FINAL_PARAMS_DIR)
  if not path.is_dir():
    raise ExportError(
        f'--round={round_index}: {str(path)!r} does not exist (the round has '
        'not finished training' + (
            ', or the run had no warm-up: export its starting checkpoint '
            'instead' if round_index == 0 else '') + ').')
  return path


def read_run_config(workdir: str | os.PathLike[str]
                    ) -> ml_collections.ConfigDict:
  """The config a run started with (`DIR/config.json`)."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise ExportError(f'--workdir: {str(path)!r} does not exist; is '
                      f'{str(workdir)!r} a tpt_jax run directory?')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def architecture_of(config: ml_collections.ConfigDict
                    ) -> models.Architecture:
  """The run's architecture: its HF checkpoint's, else the variant's."""
  path = config.checkpoint.path
  if path and pathlib.Path(path, 'config.json').is_file():
    return checkpoints.read_hf_config(path)
  return models.transformer_config(config.model)


def load_params(params_dir: str | os.PathLike[str],
                config: ml_collections.ConfigDict,
                model: models.Model, *,
                base_dir: str | os.PathLike[str] | None = None) -> Params:
  """Plain params of `model` from `params_dir`; adapters merged into the
  base (`base_dir`, else the run's checkpoint)."""
  mesh = sharding_lib.make_mesh(ml_collections.ConfigDict(
      {'shape': (1, 1, 1)}), jax.devices()[:1])
  params_dir = pathlib.Path(params_dir).absolute()
  if not params_dir.is_dir():
    raise ExportError(f'--params: {str(params_dir)!r} does not exist.')
  shapes = checkpoints.orbax_param_shapes(params_dir)
  if not any('_LoRAEinsum' in name for name in shapes):
    return checkpoints.load_orbax(params_dir, model, mesh)
  adapters = ocp.StandardCheckpointer().restore(params_dir)
  base = base_dir or config.checkpoint.path
  if not base:
    raise ExportError(
        f'--params={str(params_dir)!r} holds LoRA adapters; give --base= '
        '(the params they were trained on): the run has no checkpoint.')
  base_params = checkpoints.load_params(base, model, mesh)
  return train_lib.merge_lora_params(
      base_params, adapters, scale=train_lib.lora_scale(config.train))


def _tokenizer_files(config: ml_collections.ConfigDict,
                     workdir: pathlib.Path | None) -> list[pathlib.Path]:
  """The tokenizer files to ship with the export."""
  files = []
  checkpoint = config.checkpoint.path
  if checkpoint and pathlib.Path(checkpoint).is_dir():
    files += [pathlib.Path(checkpoint) / name for name in HF_TOKENIZER_FILES
              if (pathlib.Path(checkpoint) / name).is_file()]
  path = config.tokenizer.get('path')
  if path and pathlib.Path(path).is_file():
    files = [f for f in files if f.name != pathlib.Path(path).name]
    files.append(pathlib.Path(path))
  if not files and workdir is not None and (
      workdir / TOY_TOKENIZER_FILE).is_file():
    files.append(workdir / TOY_TOKENIZER_FILE)
  return files


def _tokenizer_config(files: list[pathlib.Path]) -> dict[str, Any] | None:
  """A tokenizer_config.json for a lone sentencepiece / tokenizer.json."""
  names = {f.name for f in files}
  if 'tokenizer_config.json' in names or not files:
    return None
  tokenizer = tokenizer_lib.load_tokenizer(files[-1])
  special = tokenizer_lib.special_tokens(tokenizer)
  def piece(token_id):
    if token_id is None:
      return None
    if isinstance(tokenizer, tokenizer_lib.HFTokenizer):
      return tokenizer.id_to_token(token_id)
    return tokenizer_lib.SPECIAL_PIECES.get(token_id)
  config = {'bos_token': piece(special.bos_id),
            'eos_token': piece(special.eos_id),
            'model_max_length': 1 << 30}
  if special.family == 'gemma2' and 'tokenizer.model' in names:
    config.update(tokenizer_class='GemmaTokenizer', pad_token='<pad>',
                  add_bos_token=True, add_eos_token=False)
  else:
    config['tokenizer_class'] = 'PreTrainedTokenizerFast'
  return config


def export(params: Params, architecture: models.Architecture,
           output: str | os.PathLike[str], *,
           tokenizer_files: list[pathlib.Path] = (),
           overwrite: bool = False,
           max_shard_bytes: int = 5 * 2**30) -> pathlib.Path:
  """Writes `params` as a Hugging Face directory at `output`, atomically."""
  output = pathlib.Path(output).absolute()
  if output.exists():
    if not output.is_dir():
      raise ExportError(f'--output: {str(output)!r} exists and is not a '
                        'directory.')
    if any(output.iterdir()) and not overwrite:
      raise ExportError(f'--output: {str(output)!r} is not empty; pass '
                        '--overwrite to replace it.')
  output.parent.mkdir(parents=True, exist_ok=True)
  tmp = output.parent / f'.{output.name}.tmp-{os.getpid()}'
  if tmp.exists():
    shutil.rmtree(tmp)
  try:
    checkpoints.save_safetensors(params, architecture, tmp,
                                 max_shard_bytes=max_shard_bytes)
    dtypes = {str(x.dtype) for x in jax.tree.leaves(params)}
    config_json = json.loads((tmp / 'config.json').read_text())
    if len(dtypes) == 1:
      config_json['torch_dtype'] = dtypes.pop()
    (tmp / 'config.json').write_text(json.dumps(config_json, indent=1))
    for file in tokenizer_files:
      shutil.copyfile(file, tmp / file.name)
    tokenizer_config = _tokenizer_config(list(tokenizer_files))
    if tokenizer_config is not None:
      (tmp / 'tokenizer_config.json').write_text(
          json.dumps(tokenizer_config, indent=1))
    if output.exists():
      shutil.rmtree(output)
    os.replace(tmp, output)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return output


def export_run(*, output: str | os.PathLike[str],
               workdir: str | os.PathLike[str] | None = None,
               round_index: int | None = None,
               params_dir: str | os.PathLike[str] | None = None,
               base_dir: str | os.PathLike[str] | None = None,
               config: ml_collections.ConfigDict | None = None,
               overwrite: bool = False,
               max_shard_bytes: int = 5 * 2**30) -> pathlib.Path:
  """Exports round `round_index` of `workdir`, or the params in
  `params_dir`, with the run's (or the given) config."""
  if (round_index is None) == (params_dir is None):
    raise ExportError('Give exactly one of --round and --params.')
  if config is None:
    if workdir is None:
      raise ExportError('Give --workdir (the run, whose config.json names '
                        'the model) or --config.')
    config = read_run_config(workdir)
  if round_index is not None:
    if workdir is None:
      raise ExportError('--round needs --workdir.')
    params_dir = round_params_dir(workdir, round_index)
  architecture = architecture_of(config)
  model = models.build_model(config.model, architecture)
  params = load_params(params_dir, config, model, base_dir=base_dir)
  files = _tokenizer_files(
      config, None if workdir is None else pathlib.Path(workdir))
  return export(params, architecture, output, tokenizer_files=files,
                overwrite=overwrite, max_shard_bytes=max_shard_bytes)


_WORKDIR = flags.DEFINE_string('workdir', None, 'The run directory.')
_ROUND = flags.DEFINE_integer('round', None, 'The round to export.')
_PARAMS = flags.DEFINE_string('params', None,
                              'A params (or LoRA adapters) directory.')
_BASE = flags.DEFINE_string('base', None,
                            'Base params for LoRA adapters (default: the '
                            "run's checkpoint).")
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, "A config file (.py) instead of the run's config.json.")
_OUTPUT = flags.DEFINE_string('output', None, 'The HF directory to write.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False,
                               'Replace a non-empty --output.')
_MAX_SHARD_BYTES = flags.DEFINE_integer('max_shard_bytes', 5 * 2**30,
                                        'Largest safetensors shard.')


def main(argv):
  del argv
  if not _OUTPUT.value:
    sys.exit('--output is required.')
  config = _CONFIG.value
  try:
    output = export_run(
        output=_OUTPUT.value, workdir=_WORKDIR.value, round_index=_ROUND.value,
        params_dir=_PARAMS.value, base_dir=_BASE.value, config=config,
        overwrite=_OVERWRITE.value, max_shard_bytes=_MAX_SHARD_BYTES.value)
  except (ExportError, checkpoints.CheckpointMismatchError,
          FileNotFoundError) as e:
    sys.exit(f'export: {e}')
  print(f'Wrote {output}', flush=True)


if __name__ == '__main__':
  app.run(main)
