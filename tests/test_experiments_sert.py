"""SERT: quality filters, teacher traces (JSONL, round dataset, checkpoint),
config checks, and a tiny end-to-end run of every stage.

The end-to-end runs are subprocesses of `python -m tpt_jax.main` (as a user
runs it) on a tiny config and a teacher checkpoint saved by the test, sharing
a persistent compilation cache; the other tests run in-process on a handful
of demo problems.
"""

import dataclasses
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from tpt_jax import checkpoints
from tpt_jax import config as config_lib
from tpt_jax import stages
from tpt_jax import workdir as workdir_lib
from tpt_jax import models
from tpt_jax import records
from tpt_jax import sampling
from tpt_jax import types
from tpt_jax.experiments import sert
from tpt_jax.experiments import sert_config
from tpt_jax.experiments import teacher_traces
from tpt_jax import sharding
from tpt_jax import tasks
from tpt_jax import tokenizer as tokenizer_lib
from tpt_jax.tasks import demo

_REPO = pathlib.Path(__file__).resolve().parents[1]

# --- quality filters ---------------------------------------------------------

# A GSM8K-style zero-shot trace that reasons (26 words of reasoning).
_REASONING = ('Natalia sold 48 clips in April. In May she sold half as many, '
              'which is 48 / 2 = 24 clips. Altogether she sold 48 + 24 = 72 '
              'clips.\nThe answer is 72.')


def _trace(sample_index, completion, correct=True, problem_id='gsm8k/train/0'):
  return types.Trace(problem_id=problem_id, sample_index=sample_index,
                     prompt='Question: ...\nAnswer:\n', completion=completion,
                     correct=correct, extracted_answer='72')


def _sert_config():
  config = config_lib.base_config()
  config.mode = 'sert'
  return config


def test_sert_filters_keep_reasoning_and_drop_answer_only_zero_shot_paths():
  traces = [
      _trace(0, _REASONING),
      # Zero-shot paths that only state the answer: verified correct (GSM8K
      # falls back to the last number), but they teach no reasoning.
      _trace(1, 'The answer is 72.'),
      _trace(2, '72'),
      _trace(3, '#### 72'),
      # Too little reasoning to learn from.
      _trace(4, '48 + 24 = 72.\nThe answer is 72.'),
      # A degenerate loop that happens to end in the right answer.
      _trace(5, 'Natalia sold 48 clips. ' + 'She sold 24 more clips. ' * 30 +
             'The answer is 72.'),
      # Reasoning to a wrong answer.
      _trace(6, _REASONING.replace('= 72', '= 70').replace('is 72', 'is 70'),
             correct=False),
      # The same path sampled twice.
      _trace(7, _REASONING.replace('\n', ' \n ')),
      _trace(0, _REASONING, problem_id='gsm8k/train/1'),
  ]
  result = sert_config.prune_pipeline(_sert_config())(traces)
  assert result.removed == {'correct': 1, 'repetition': 1, 'no_reasoning': 2,
                            'short_reasoning': 2, 'dedup': 1,
                            'max_per_problem': 0}
  assert [(t.problem_id, t.sample_index) for t in result.kept] == [
      ('gsm8k/train/0', 0), ('gsm8k/train/1', 0)]


def test_sert_filters_follow_config_prune_thresholds():
  config = _sert_config()
  config.prune.min_reasoning_words = 3
  short = _trace(4, '48 + 24 = 72.\nThe answer is 72.')
  assert sert_config.prune_pipeline(config)([short]).kept == [short]


# --- config checks -----------------------------------------------------------


@pytest.mark.parametrize('overrides, message', [
    ({'task.prompt_style': 'zero_shot_cot'},
     "config.task.prompt_style='zero_shot'"),
    ({'task.prompt_style': 'few_shot', 'task.num_few_shot': 2},
     "got 'few_shot' and 2"),
    ({'sert.sampling.temperature': -1.0}, 'config.sert.sampling.temperature'),
    ({'sert.strategies': 'correct,reasoning'}, 'config.sert.strategies'),
    ({'sert.teacher.source': 'oracle'}, 'config.sert.teacher.source'),
    ({'sert.teacher.source': 'traces'}, 'config.sert.teacher.traces_path'),
    ({'sert.teacher.variant': 'gemma2_9b'}, "with the student's tokenizer"),
    ({'sert.teacher.tokenizer_path': '/no/such/tokenizer.json'},
     "config.sert.teacher.tokenizer_path='/no/such/tokenizer.json' does not "
     'exist'),
    ({'sert.teacher.prompt_style': 'few_shot'},
     'config.sert.teacher.prompt_style'),
    ({'mode': 'distill'}, 'config.mode'),
])
def test_bad_sert_config_is_named(overrides, message):
  config = _sert_config()
  for field, value in overrides.items():
    section, *rest = field.split('.')
    target = config[section] if rest else config
    for part in rest[:-1]:
      target = target[part]
    target[rest[-1] if rest else section] = value
  with pytest.raises(config_lib.ConfigError, match=message.replace(
      '(', r'\(').replace(')', r'\)')):
    config_lib.validate(config)


def test_a_library_teacher_needs_its_checkpoint():
  config = _sert_config()
  config.model.variant = 'gemma2_2b'
  config.sert.teacher.variant = 'gemma2_9b'
  config_lib.validate(config)  # Config files leave the path to the user.
  with pytest.raises(config_lib.ConfigError,
                     match='config.sert.teacher.checkpoint_path'):
    sert_config.check_teacher_weights(config)


# --- teacher traces ----------------------------------------------------------


def _tiny_config(workdir):
  config = config_lib.base_config()
  config.mode = 'sert'
  config.workdir = str(workdir)
  config.model.variant = 'gemma2_tiny'
  config.model.param_dtype = 'float32'
  config.model.compute_dtype = 'float32'
  config.task.num_train_problems = 6
  config.task.num_test_problems = 2
  config.prune.min_reasoning_words = 3
  return config


@pytest.fixture(scope='module')
def ctx(tmp_path_factory):
  """A student context without a model (reading a teacher file needs none):
  6 demo train problems and the demo's tokenizer."""
  workdir = tmp_path_factory.mktemp('sert_ctx')
  config = _tiny_config(workdir)
  task = tasks.get_task('demo')
  return stages.RunContext(
      config=config, workdir=workdir, mesh=None, model=None,
      tokenizer=tokenizer_lib.train_sentencepiece(
          demo.corpus(config.task.seed, config=config.task),
          workdir / 'tokenizer.model', vocab_size=512),
      task=task, train_problems=task.load_problems('train', config.task),
      test_problems=[], exemplars=[], base_params=None)


def _write_jsonl(path, rows):
  path.write_text(''.join(
      (row if isinstance(row, str) else json.dumps(row)) + '\n'
      for row in rows))
  return path


def test_read_teacher_jsonl_matches_problems_by_id_or_question(ctx, tmp_path):
  p0, p1, p2 = ctx.train_problems[:3]
  path = _write_jsonl(tmp_path / 'teacher.jsonl', [
      {'problem_id': p0.problem_id, 'completion': p0.solution},
      {'problem_id': p0.problem_id, 'completion': 'The answer is 0.'},
      '',
      {'question': '  ' + p1.question.replace(' ', '\n', 1),
       'rationale': p1.solution, 'source': 'ignored'},
      {'problem_id': p2.problem_id, 'completion': 'x', 'sample_index': 5},
      {'problem_id': 'demo/test/0', 'completion': 'not a train problem'},
  ])
  traces, unmatched = teacher_traces.read_teacher_traces(path, ctx.train_problems)
  assert unmatched == 1
  assert [(t['problem_id'], t['sample_index']) for t in traces] == [
      (p0.problem_id, 0), (p0.problem_id, 1), (p1.problem_id, 0),
      (p2.problem_id, 5)]
  assert traces[2]['completion'] == p1.solution


@pytest.mark.parametrize('rows, line, message', [
    (['{"problem_id": "demo/train/0", "completion": "a"}', '{not json'],
     2, 'not valid JSON'),
    ([{'problem_id': 'demo/train/0'}], 1,
     'missing field "completion" (or "rationale")'),
    ([{'completion': 'a'}], 1, 'missing field "problem_id" (or "question")'),
    (['', {'problem_id': 7, 'completion': 'a'}], 2,
     'field "problem_id" must be a string'),
    (['[1, 2]'], 1, 'must be a JSON object'),
    ([{'problem_id': 'demo/train/0', 'completion': 'a', 'sample_index': 0},
      {'problem_id': 'demo/train/0', 'completion': 'b', 'sample_index': 0}],
     2, 'repeats'),
])
def test_malformed_teacher_jsonl_names_file_line_and_field(
    ctx, tmp_path, rows, line, message):
  path = _write_jsonl(tmp_path / 'bad.jsonl', rows)
  with pytest.raises(teacher_traces.TeacherTracesError) as error:
    teacher_traces.read_teacher_traces(path, ctx.train_problems)
  assert f'{path}:{line}: ' in str(error.value)
  assert message in str(error.value)


def test_teacher_traces_naming_no_train_problem_are_an_error(ctx, tmp_path):
  path = _write_jsonl(tmp_path / 'other.jsonl',
                      [{'problem_id': '17', 'completion': 'a'}])
  with pytest.raises(teacher_traces.TeacherTracesError, match="e.g. 'demo/train/0'"):
    teacher_traces.read_teacher_traces(path, ctx.train_problems)


def test_distillation_data_from_a_teacher_jsonl_is_verified_and_pruned(
    ctx, tmp_path):
  problems = ctx.train_problems
  path = _write_jsonl(tmp_path / 'teacher.jsonl', [
      *({'problem_id': p.problem_id, 'completion': p.solution}
        for p in problems[:4]),
      {'problem_id': problems[4].problem_id,
       'completion': f'The answer is {problems[4].answer}.'},
      {'problem_id': problems[5].problem_id, 'completion': 'The answer is -1.'},
  ])
  config = _tiny_config(tmp_path / 'run')
  config.sert.teacher.source = 'traces'
  config.sert.teacher.traces_path = str(path)
  traces_ctx = dataclasses.replace(ctx, config=config,
                                   workdir=tmp_path / 'run')
  report = sert.teacher_traces(traces_ctx, workdir_lib.Timings(tmp_path))
  assert report['num_traces'] == 6 and report['num_correct'] == 5
  assert report['removed']['correct'] == 1
  assert report['removed']['no_reasoning'] == 1
  assert report['num_kept'] == 4
  dataset = tmp_path / 'run' / 'teacher' / 'round_1' / 'dataset'
  kept = records.read_round(dataset)
  assert [r['problem_id'] for r in kept] == [p.problem_id
                                             for p in problems[:4]]
  # The student learns the teacher's solution from its own zero-shot prompt.
  assert kept[0]['prompt'] == f'Question: {problems[0].question}\nAnswer:\n'
  assert kept[0]['completion'] == problems[0].solution
  # A rerun reads the finished report, not the file.
  path.write_text('{broken')
  assert sert.teacher_traces(traces_ctx, workdir_lib.Timings(tmp_path)) == report
  # The same traces as a round dataset directory.
  again, unmatched = teacher_traces.read_teacher_traces(dataset, problems)
  assert unmatched == 0 and [t['completion'] for t in again] == [
      p.solution for p in problems[:4]]


@pytest.fixture(scope='module')
def teacher_checkpoint(tmp_path_factory):
  """A tiny model's random params (seed 123) saved with gm.ckpts."""
  config = _tiny_config('/unused')
  mesh = sharding.make_mesh(config.mesh)
  model = models.build_model(config.model)
  params = model.init_params(jax.random.key(123))
  path = tmp_path_factory.mktemp('teacher') / 'params'
  checkpoints.save_orbax(params, path)
  return path, params, mesh, model


def test_teacher_from_a_checkpoint_is_loaded(ctx, teacher_checkpoint):
  path, saved, mesh, model = teacher_checkpoint
  config = _tiny_config(ctx.workdir)
  config.sert.teacher.checkpoint_path = str(path)
  teacher = sert.load_teacher(dataclasses.replace(
      ctx, config=config, mesh=mesh, model=model))
  assert teacher.model == model
  assert teacher.workdir == ctx.workdir / 'teacher'
  assert teacher.config.task.prompt_style == 'zero_shot_cot'
  for loaded, expected in zip(jax.tree.leaves(teacher.base_params),
                              jax.tree.leaves(saved)):
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(expected))


_LLAMA3_SPECIALS = ['<|begin_of_text|>', '<|end_of_text|>',
                    '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>']


@pytest.fixture(scope='module')
def llama_teacher(ctx, tmp_path_factory):
  """A tiny random Llama-3 as a Hugging Face directory (config.json,
  safetensors) with its own tokenizer.json: a byte-level BPE with Llama-3's
  special tokens, trained on the demo corpus (not the student's vocabulary)."""
  from tokenizers import decoders, models as bpe_models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  import tokenizers  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp('llama_teacher')
  tokenizer = tokenizers.Tokenizer(bpe_models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train_from_iterator(
      demo.corpus(ctx.config.task.seed, config=ctx.config.task),
      trainer=trainers.BpeTrainer(
          # Id 0 is the samplers' padding id: a placeholder holds it.
          vocab_size=450, special_tokens=['<|unused|>'] + _LLAMA3_SPECIALS,
          show_progress=False,
          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tokenizer.save(str(path / 'tokenizer.json'))
  config = _tiny_config('/unused')
  config.model.variant = 'llama3_tiny'
  model = models.build_model(config.model)
  checkpoints.save_safetensors(model.init_params(jax.random.key(5)),
                               model.config, path)
  return path


def test_a_teacher_of_another_family_samples_with_its_own_tokenizer(
    ctx, llama_teacher, tmp_path):
  """A Llama teacher (its tokenizer from its checkpoint directory) for a
  Gemma2 student: it samples with the continuous engine and its own
  tokenizer, and the student's dataset holds its traces as text."""
  config = _tiny_config(tmp_path / 'run')
  config.mesh.shape = (1, 1, 1)
  config.sert.teacher.variant = 'llama3_tiny'
  config.sert.teacher.checkpoint_path = str(llama_teacher)
  config.sert.teacher.evaluate = False
  config.sert.teacher.sampling.num_samples_per_problem = 2
  config.sert.strategies = 'dedup'  # A random teacher is never right.
  config.sampling.max_new_tokens = 8
  config.sampling.batch_size = 4
  config.sampling.prompt_length_buckets = (128,)
  config.sampling.stop_token_ids = (7,)  # The student's id: not the teacher's.
  config_lib.validate(config)
  run_ctx = dataclasses.replace(
      ctx, config=config, workdir=tmp_path / 'run',
      mesh=sharding.make_mesh(config.mesh, jax.devices()[:1]))
  report = sert.teacher_traces(run_ctx, workdir_lib.Timings(tmp_path))
  round_dir = tmp_path / 'run' / 'teacher' / 'round_1'
  think = {(r['problem_id'], r['sample_index']): r['completion']
           for shard in sorted((round_dir / 'think').glob('shard_*.json'))
           for r in workdir_lib.read_json(shard)['records']}
  assert len(think) == report['num_traces'] == 12

  # The reference: the static engine with the teacher's own tokenizer (and
  # its end-of-text ids), on the teacher's prompts.
  teacher = sert.load_teacher(run_ctx)
  assert tokenizer_lib.special_tokens(teacher.tokenizer).family == 'llama3'
  assert teacher.config.tokenizer.path == str(llama_teacher /
                                               'tokenizer.json')
  assert teacher.config.sampling.stop_token_ids == ()
  settings = dataclasses.replace(
      stages.sampling_settings(teacher.config.sampling, workdir_lib.derived_seed(
          config.seed, 1, workdir_lib.Stage.THINK)),
      eos_token_ids=tokenizer_lib.eos_token_ids(teacher.tokenizer))
  problems = ctx.train_problems
  reference = sampling.Sampler(
      teacher.model, teacher.base_params,
      tokenizer=teacher.tokenizer).sample_all(
          [teacher.prompt(p) for p in problems], settings,
          problem_ids=[p.problem_id for p in problems], show_progress=False)
  assert think == {(problems[r.problem_index].problem_id, r.sample_index):
                   r.text for r in reference}

  # The student's records: its zero-shot prompts and the teacher's text,
  # which the student's tokenizer encodes and decodes back.
  kept = records.read_round(round_dir / 'dataset')
  assert len(kept) == report['num_kept'] > 0
  for record in kept:
    assert record['completion'] == think[(record['problem_id'],
                                          record['sample_index'])]
    assert record['prompt'].startswith('Question: ')
    student = ctx.tokenizer
    assert student.decode(student.encode(record['completion'])) == (
        record['completion'])


def test_a_teacher_with_its_own_tokenizer_may_be_of_another_size(
    llama_teacher):
  config = _sert_config()
  config.sert.teacher.variant = 'llama3_1_8b'
  with pytest.raises(config_lib.ConfigError, match="student's tokenizer"):
    config_lib.validate(config)
  config.sert.teacher.tokenizer_path = str(llama_teacher / 'tokenizer.json')
  config_lib.validate(config)  # A toy student, a library-size teacher.


# --- end to end --------------------------------------------------------------

_TINY_SERT_CONFIG = '''
from tpt_jax import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.mode = 'sert'
  c.model.variant = 'gemma2_tiny'
  c.model.param_dtype = 'float32'
  c.model.compute_dtype = 'float32'
  c.mesh.shape = (1, 2, 1)
  c.task.num_train_problems = 8
  c.task.num_test_problems = 4
  c.sampling.max_new_tokens = 12
  c.sampling.batch_size = 8
  c.sampling.show_progress = False
  # One prompt bucket, one decode loop: fewer programs to compile.
  c.sampling.prompt_length_buckets = (128,)
  c.sampling.max_cache_segments = 1
  c.loop.num_rounds = 1
  c.loop.problems_per_shard = 4
  c.loop.warmup.num_examples = 8
  c.eval.num_samples = 0
  # A tiny model is never right: judge the wiring with filters it passes.
  c.prune.min_reasoning_words = 1
  c.sert.strategies = 'repetition,no_reasoning,short_reasoning,dedup'
  c.sert.sampling.num_samples_per_problem = 2
  c.sert.teacher.prompt_style = 'zero_shot'
  # As the student's (temperature aside), so the student's programs serve.
  c.sert.teacher.sampling.num_samples_per_problem = 2
  c.sert.teacher.sampling.top_k = 40
  # A checkpoint (saved by the test), then warmed up like the demo's.
  c.sert.teacher.checkpoint_path = {checkpoint!r}
  c.sert.teacher.warmup.num_examples = 16
  c.train.batch_size = 4
  c.train.max_seq_len = 128
  c.train.num_steps = 2
  c.train.warmup_steps = 1
  c.train.learning_rate = 1e-3
  c.train.log_every = 1
  c.train.checkpoint_every = 1
  c.train.progress_bar = False
  return c
'''


@pytest.fixture(scope='module')
def config_file(tmp_path_factory, teacher_checkpoint):
  path = tmp_path_factory.mktemp('configs') / 'tiny_sert.py'
  path.write_text(_TINY_SERT_CONFIG.format(
      checkpoint=str(teacher_checkpoint[0])))
  return path


@pytest.fixture(scope='module')
def sert_run(config_file, run_main, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('sert_run')
  result = run_main(config_file, workdir)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return workdir, result


def test_a_sert_run_writes_every_stage_and_a_valid_summary(
    sert_run, teacher_checkpoint):
  workdir, result = sert_run
  self_training = workdir / 'self_training'
  assert (self_training / 'round_0' / 'warmup' / 'final_params').is_dir()
  assert (self_training / 'round_1' / 'train' / 'final_params').is_dir()
  assert records.is_round_dataset(self_training / 'round_1' / 'dataset')
  assert (self_training / 'summary.json').exists()
  # Self-training sampled SERT's many zero-shot paths per problem.
  think = workdir_lib.read_json(self_training / 'round_1' / 'think' /
                         'shard_00000.json')['records']
  assert {r['sample_index'] for r in think} == {0, 1}
  teacher = workdir / 'teacher'
  assert (teacher / 'round_0' / 'warmup' / 'final_params').is_dir()
  assert records.is_round_dataset(teacher / 'round_1' / 'dataset')
  for name in ('distillation', 'self_training_distillation'):
    assert (workdir / name / 'round_1' / 'train' / 'final_params').is_dir()
  summary = json.loads((workdir / 'sert_summary.json').read_text())
  stages = {s['stage']: s for s in summary['stages']}
  assert list(stages) == ['student', 'self_training',
                          'self_training+distillation', 'distillation',
                          'teacher']
  for stage in stages.values():
    assert 0.0 <= stage['metrics']['pass@1'] <= 1.0
  filters = ['repetition', 'no_reasoning', 'short_reasoning', 'dedup']
  prune_report = workdir_lib.read_json(self_training / 'round_1' / 'prune.json')
  assert stages['self_training']['filters']['removed'] == {
      name: prune_report['removed'][name] for name in filters}
  assert stages['self_training']['filters']['num_traces'] == 8 * 2
  teacher_report = workdir_lib.read_json(teacher / 'round_1' / 'prune.json')
  assert stages['distillation']['filters']['num_kept'] == (
      teacher_report['num_kept'])
  assert list(stages['distillation']['filters']['removed']) == filters
  assert stages['student']['metrics'] == workdir_lib.read_json(
      self_training / 'round_0' / 'eval.json')['metrics']
  assert (workdir / 'sert_summary.png').stat().st_size > 1000
  assert 'self_training+distillation' in result.stdout
  assert (f'Teacher: gemma2_tiny, 0.18M params from {teacher_checkpoint[0]}'
          in result.stdout)
  assert '-short_reasoning' in result.stdout


def test_a_killed_sert_run_resumes_and_a_changed_config_is_refused(
    sert_run, config_file, run_main, tmp_path):
  reference, _ = sert_run
  # The reference run, as if it had been killed before pruning the teacher's
  # traces (its think shards are there, its dataset is not).
  workdir = tmp_path / 'killed'
  shutil.copytree(reference, workdir)
  for name in ('distillation', 'teacher/round_1/dataset'):
    shutil.rmtree(workdir / name)
  for name in ('teacher/round_1/prune.json', 'sert_summary.json',
               'timings.json'):
    (workdir / name).unlink()
  result = run_main(config_file, workdir,
                    crash_at='distillation:train:1')
  assert result.returncode == -9, result.stderr[-3000:]
  assert not (workdir / 'sert_summary.json').exists()
  result = run_main(config_file, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (json.loads((workdir / 'sert_summary.json').read_text()) ==
          json.loads((reference / 'sert_summary.json').read_text()))
  assert records.read_round(workdir / 'teacher' / 'round_1' / 'dataset') == (
      records.read_round(reference / 'teacher' / 'round_1' / 'dataset'))
  # Only the unfinished stages ran again: no sampling, no self-training.
  timings = json.loads((workdir / 'timings.json').read_text())
  assert set(timings) == {'distillation/train', 'distillation/eval', 'total'}
  # SERT distils from the last self-training round: its count is fixed.
  result = run_main(config_file, workdir,
                    extra=['--config.loop.num_rounds=2'])
  assert result.returncode == 2
  assert 'config.loop.num_rounds: 1 in the workdir, 2 now' in result.stderr
