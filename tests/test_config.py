"""The base config, its validation, and the recipes config files share."""

import json
import pathlib

import pytest

from tpt_jax import config as config_lib

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _paper_config():
  config = config_lib.base_config()
  config_lib.set_tpt_paper(config)
  config_lib.validate(config)
  return config


def test_the_paper_recipe_is_the_released_protocol():
  c = _paper_config()
  assert c.tokenizer.chat_template is True
  assert c.task.name == 'gsm8k'
  assert c.task.prompt_style == 'zero_shot_cot'
  assert c.task.num_few_shot == 0
  assert '####' in c.task.instruction
  assert c.sampling.temperature == 0.8
  assert c.sampling.max_new_tokens == 1500
  assert 2 <= c.sampling.num_samples_per_problem <= 5
  assert c.verify.grader == 'paper_strict'
  assert c.prune.strategies == 'first_correct'
  assert c.loop.max_train_examples_per_round == 2000
  assert c.prune.num_heldout_examples == 200
  assert c.loop.policy == 'recursive'
  assert c.train.lora_rank == 0
  assert c.train.learning_rate == 1e-6
  assert c.train.lr_schedule == 'cosine'
  assert c.train.warmup_fraction == 0.1
  assert c.train.num_epochs == 1.0 and c.train.num_steps == 0
  assert c.train.batch_size == 8 and c.train.grad_accum_steps == 4
  assert c.train.max_seq_len == 1600
  assert c.eval.num_samples == 10
  assert c.eval.temperature == 0.7
  assert tuple(c.eval.ks) == (1, 10)
  assert tuple(c.eval.graders) == ('paper_strict', 'default')
  indices = json.loads(pathlib.Path(c.task.test_indices_path).read_text())
  assert len(indices) == 500 and len(set(indices)) == 500


@pytest.mark.parametrize('name', ['tpt_paper_gemma2_2b_it',
                                  'tpt_paper_gemma2_9b_it'])
def test_paper_config_files_use_the_recipe(name):
  source = (_REPO / 'configs' / f'{name}.py').read_text()
  assert source.startswith('r"""') and 'not run by us' in source
  assert 'config_lib.set_tpt_paper(config)' in source


@pytest.mark.parametrize('field, value, message', [
    ('sampling.batch_size', 0, 'config.sampling.batch_size=0 must be >= 1'),
    ('sampling.num_samples_per_problem', 0,
     'config.sampling.num_samples_per_problem=0 must be >= 1'),
    ('sampling.max_new_tokens', -1,
     'config.sampling.max_new_tokens=-1 must be >= 1'),
    ('sampling.temperature', -1.0, 'config.sampling.temperature=-1.0'),
    ('train.warmup_fraction', 1.5, 'config.train.warmup_fraction=1.5'),
    ('prune.num_heldout_examples', -1,
     'config.prune.num_heldout_examples=-1 must not be negative'),
    ('eval.graders', ('strictest',),
     "config.eval.graders: 'strictest' is not a grader of task demo"),
    ('verify.grader', 'paper_strict',
     "config.verify.grader: 'paper_strict' is not a grader of task demo"),
    ('mesh.sampling_shape', (-1, -1, 1),
     'config.mesh.sampling_shape=(-1, -1, 1): sizes must be positive'),
    ('mesh.sampling_shape', (8, 1),
     'config.mesh.sampling_shape=(8, 1) must have 3 entries'),
])
def test_values_are_checked_before_any_work(field, value, message):
  config = config_lib.base_config()
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=message.replace(
      '(', r'\(').replace(')', r'\)')):
    config_lib.validate(config)


def test_nothing_is_held_out_by_default():
  assert config_lib.base_config().prune.num_heldout_examples == 0
