"""Tests of the `code_contests` task (stdin/stdout problems)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tpt_jax import config as config_lib
from tpt_jax import evaluate
from tpt_jax import verify
from tpt_jax import sources
from tpt_jax import tasks
from tpt_jax.tasks import code_contests as cc
from tpt_jax.verify import stdio_judge

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PROBLEMS_FILE = REPO_ROOT / 'tests' / 'data' / 'stdio_problems.jsonl'


def _records():
  with PROBLEMS_FILE.open(encoding='utf-8') as f:
    return [json.loads(line) for line in f]


@pytest.fixture
def data_dir(tmp_path):
  """The test problems as both splits of a CodeContests JSONL export."""
  directory = tmp_path / 'code_contests'
  directory.mkdir()
  shutil.copy(PROBLEMS_FILE, directory / 'train.jsonl')
  shutil.copy(PROBLEMS_FILE, directory / 'test.jsonl')
  return directory


def _task_config(path, **fields):
  config = config_lib.base_config().task
  config.name = cc.NAME
  config.code_contests = cc.default_config()
  config.code_contests.path = str(path)
  for name, value in fields.items():
    config.code_contests[name] = value
  return config


def test_get_task_finds_it():
  task = tasks.get_task('code_contests')
  assert task is cc.TASK
  assert isinstance(task, tasks.Task)
  assert task.majority_vote is False
  assert 'code_contests' in tasks.task_names()


def test_loads_the_code_contests_jsonl_layout(data_dir):
  problems = cc.TASK.load_problems('test', _task_config(data_dir))
  records = _records()
  assert [p.problem_id for p in problems] == [
      f'code_contests/test/{r["name"]}' for r in records]
  first = problems[0]
  assert first.question == records[0]['description']
  assert first.answer == records[0]['test_programs']['passed']
  assert first.solution == cc.fenced(first.answer)
  # Default: public + private + generated, in that order.
  assert [t.input for t in first.stdio_tests] == ['1 2\n', '-5 5\n', '3 1000000000\n']
  assert first.time_limit_s == 1.0
  assert first.float_tolerance == 1e-6


def test_test_sets_differ_for_training_and_evaluation(data_dir):
  config = _task_config(data_dir, train_test_sets='public',
                        eval_test_sets='private,generated')
  train = cc.TASK.load_problems('train', config)
  test = cc.TASK.load_problems('test', config)
  assert [t.input for t in train[0].stdio_tests] == ['1 2\n']
  assert [t.input for t in test[0].stdio_tests] == ['-5 5\n', '3 1000000000\n']


def test_time_limit_factor_and_test_cap(data_dir):
  config = _task_config(data_dir, time_limit_factor=2.5,
                        max_tests_per_problem=2)
  problem = cc.TASK.load_problems('train', config)[0]
  assert problem.time_limit_s == 2.5
  assert len(problem.stdio_tests) == 2


def test_valid_split_as_test(data_dir):
  (data_dir / 'test.jsonl').rename(data_dir / 'valid.jsonl')
  with pytest.raises(config_lib.ConfigError, match="no 'test' split"):
    cc.TASK.load_problems('test', _task_config(data_dir))
  problems = cc.TASK.load_problems('test', _task_config(data_dir,
                                                        test_split='valid'))
  assert len(problems) == len(_records())


def test_loads_parquet_shards_in_the_hugging_face_layout(tmp_path):
  pa = pytest.importorskip('pyarrow')
  pq = pytest.importorskip('pyarrow.parquet')
  records = [{k: v for k, v in r.items() if k != 'test_programs'}
             for r in _records()]
  directory = tmp_path / 'hf' / 'data'
  directory.mkdir(parents=True)
  for index, shard in enumerate((records[:10], records[10:])):
    pq.write_table(pa.Table.from_pylist(shard),
                   directory / f'train-{index:05d}-of-00002.parquet')
  pq.write_table(pa.Table.from_pylist(records[:3]),
                 directory / 'test-00000-of-00001.parquet')
  config = _task_config(tmp_path / 'hf')
  train = cc.TASK.load_problems('train', config)
  assert [p.question for p in train] == [r['description'] for r in records]
  assert train[0].stdio_tests[0] == stdio_judge.StdioTest('1 2\n', '3\n')
  assert train[0].time_limit_s == 1.0
  assert len(cc.TASK.load_problems('test', config)) == 3


def test_parquet_without_pyarrow_says_to_install_it(tmp_path, monkeypatch):
  directory = tmp_path / 'hf'
  directory.mkdir()
  (directory / 'train-00000-of-00001.parquet').write_bytes(b'PAR1')
  monkeypatch.setitem(sys.modules, 'pyarrow.parquet', None)
  with pytest.raises(ImportError, match='pip install pyarrow'):
    cc.TASK.load_problems('train', _task_config(directory))


def test_loads_apps_style_input_output(tmp_path):
  lines = [
      {'problem_id': 7, 'question': 'Add the numbers.',
       'input_output': json.dumps({'inputs': ['1 2\n', ['3 4', '']],
                                   'outputs': ['3\n', ['7']]}),
       'solutions': json.dumps(['print(sum(map(int, input().split())))\n'])},
      {'problem_id': 8, 'question': 'Call-based: not stdio.',
       'input_output': json.dumps({'fn_name': 'f', 'inputs': [[1]],
                                   'outputs': [[1]]}),
       'solutions': '[]'},
  ]
  directory = tmp_path / 'apps'
  directory.mkdir()
  (directory / 'train.jsonl').write_text(
      ''.join(json.dumps(line) + '\n' for line in lines))
  problems = cc.TASK.load_problems('train', _task_config(
      directory, default_time_limit_s=3.0))
  assert [p.problem_id for p in problems] == ['code_contests/train/7']
  problem = problems[0]
  assert problem.stdio_tests == (stdio_judge.StdioTest('1 2\n', '3\n'),
                           stdio_judge.StdioTest('3 4\n\n', '7\n'))
  assert problem.time_limit_s == 3.0
  assert cc.TASK.verify(cc.fenced(problem.answer), problem) == (True,
                                                                'passed')


def test_malformed_record_names_file_and_record(tmp_path):
  directory = tmp_path / 'bad'
  directory.mkdir()
  good = _records()[0]
  bad = {**good, 'public_tests': {'input': ['1'], 'output': []}}
  (directory / 'train.jsonl').write_text(
      json.dumps(good) + '\n' + json.dumps(bad) + '\n')
  with pytest.raises(sources.MalformedInputError,
                     match=r'train.jsonl: record 1: public_tests has 1 '
                     r'inputs but 0 outputs'):
    cc.TASK.load_problems('train', _task_config(directory))
  config = _task_config(directory)
  config.sources.on_malformed_line = 'skip'
  assert len(cc.TASK.load_problems('train', config)) == 1


def test_problem_without_tests_in_its_sets_is_left_out(tmp_path):
  directory = tmp_path / 'few'
  directory.mkdir()
  record = {**_records()[0], 'private_tests': {'input': [], 'output': []},
            'generated_tests': None}
  (directory / 'train.jsonl').write_text(json.dumps(record) + '\n')
  config = _task_config(directory, train_test_sets='private,generated')
  assert cc.TASK.load_problems('train', config) == []


@pytest.mark.parametrize('field, value, message', [
    ('train_test_sets', 'public,secret', 'train_test_sets'),
    ('eval_test_sets', '', 'eval_test_sets'),
    ('test_split', 'dev', 'test_split'),
    ('time_limit_factor', 0.0, 'time_limit_factor'),
    ('float_tolerance', -1.0, 'float_tolerance'),
    ('max_tests_per_problem', -1, 'max_tests_per_problem'),
])
def test_bad_config_fields_are_named(data_dir, field, value, message):
  with pytest.raises(config_lib.ConfigError,
                     match=f'config.task.code_contests.{message}'):
    cc.TASK.load_problems('train', _task_config(data_dir, **{field: value}))


def test_missing_data_names_the_config_field(tmp_path):
  with pytest.raises(config_lib.ConfigError,
                     match='config.task.code_contests.path'):
    cc.TASK.load_problems('train', _task_config(tmp_path / 'nowhere'))


@pytest.mark.parametrize('completion, program', [
    ('Draft:\n```python\nprint(1)\n```\nFinal:\n```python\nprint(2)\n```\n',
     'print(2)\n'),
    ('```py\nx = 1\n```\n```\n\n```', 'x = 1\n'),  # An empty last block.
    ('Here it is:\n```python\nprint(3)\n', 'print(3)\n'),  # Cut off.
    ('print(4)\n', 'print(4)\n'),
])
def test_extract_program_takes_the_last_block(completion, program):
  assert cc.extract_program(completion) == program


def test_prompt_asks_for_one_fenced_program(data_dir):
  problems = cc.TASK.load_problems('train', _task_config(data_dir))
  prompt = cc.TASK.format_prompt(problems[1], 'zero_shot')
  assert prompt.startswith('Question: ' + problems[1].question)
  assert 'complete Python 3 program' in prompt and '```python' in prompt
  few_shot = cc.TASK.format_prompt(problems[1], 'few_shot', problems[:1])
  assert cc.fenced(problems[0].answer) in few_shot


def test_verify_many_judges_each_completion(data_dir):
  problems = cc.TASK.load_problems(
      'test', _task_config(data_dir, time_limit_factor=0.4))
  by_name = {p.problem_id.rsplit('/', 1)[1]: p for p in problems}
  programs = {r['name']: r['test_programs'] for r in _records()}
  pairs = [
      (cc.fenced(programs['circle_area']['passed']), by_name['circle_area'],
       (True, 'passed')),  # Within the 1e-6 tolerance, not exact.
      ('Thinking...\n' + cc.fenced(programs['gcd']['wrong_answer']),
       by_name['gcd'], (False, 'wrong_answer')),
      (cc.fenced(programs['sum_two']['timeout']), by_name['sum_two'],
       (False, 'timeout')),
      (cc.fenced('print(1 +'), by_name['binary'], (False, 'syntax_error')),
      ('no code at all', by_name['binary'], (False, 'syntax_error')),
  ]
  verify_config = verify.default_config()
  verify_config.code.num_workers = 2
  results = cc.TASK.verify_many([c for c, _, _ in pairs],
                                [p for _, p, _ in pairs], verify_config)
  assert results == [expected for _, _, expected in pairs]


def test_verify_needs_a_stdio_problem():
  plain = tasks.Problem('x/1', 'q', 'a')
  with pytest.raises(ValueError, match='no stdin/stdout tests'):
    cc.TASK.verify('print(1)', plain)


def test_pass_at_k_from_judged_samples(data_dir):
  """pass@k of code_contests verdicts is the unbiased estimator (as MBPP)."""
  problems = cc.TASK.load_problems('test', _task_config(data_dir))[:2]
  programs = {r['name']: r['test_programs'] for r in _records()}
  samples = {problems[0].problem_id: ['passed', 'wrong_answer',
                                      'runtime_error', 'wrong_answer'],
             problems[1].problem_id: ['wrong_answer'] * 4}
  records = []
  for problem in problems:
    name = problem.problem_id.rsplit('/', 1)[1]
    verdicts = [cc.TASK.verify(cc.fenced(programs[name][kind]), problem)
                for kind in samples[problem.problem_id]]
    records.append(evaluate.ProblemRecord(
        problem.problem_id, None, [ok for ok, _ in verdicts],
        [status for _, status in verdicts], problem.answer))
  result = evaluate.evaluate_records(records, ks=(1, 2))
  # Problem 0: 1 of 4 correct; problem 1: none.
  assert result.pass_at_k[1] == pytest.approx((0.25 + 0.0) / 2)
  assert result.pass_at_k[2] == pytest.approx((0.5 + 0.0) / 2)


def test_warmup_examples_and_corpus(data_dir):
  config = _task_config(data_dir)
  examples = cc.warmup_examples(5, seed=0, config=config)
  assert len(examples) == 5
  for prompt, completion in examples:
    assert prompt.startswith('Question: ')
    assert completion.startswith('```python\n')
  assert examples != cc.warmup_examples(5, seed=1, config=config)
  texts = cc.corpus(0, config=config)
  assert cc.INSTRUCTION in texts and _records()[0]['description'] in texts


def test_one_tiny_tpt_round(data_dir, tmp_path):
  """configs/tiny.py on code_contests: one round end to end (plumbing)."""
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'tpt_jax.main',
       f'--config={REPO_ROOT / "configs" / "tiny.py"}',
       f'--workdir={workdir}', '--config.task.name=code_contests',
       f'--config.task.code_contests.path={data_dir}',
       '--config.loop.max_train_problems=4',
       '--config.loop.max_test_problems=4',
       '--config.train.max_seq_len=512'],
      cwd=REPO_ROOT, capture_output=True, text=True, check=False,
      timeout=900, env={**os.environ, 'JAX_PLATFORMS': 'cpu',
                        'PYTHONPATH': str(REPO_ROOT)})
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  assert [entry['round'] for entry in summary['rounds']] == [0, 1]
  think = [record for shard in sorted((workdir / 'round_1' / 'think').glob(
      'shard_*.json')) for record in json.loads(shard.read_text())['records']]
  assert len(think) == 4 * 2
  # Every sample went through the stdin/stdout judge.
  assert {r['extracted_answer'] for r in think} <= set(
      stdio_judge.STDIO_STATUSES)
  assert all(r['problem_id'].startswith('code_contests/train/')
             for r in think)
  # The round's verdicts are counted in prune.json.
  prune_report = json.loads((workdir / 'round_1' / 'prune.json').read_text())
  assert sum(prune_report['verdicts'].values()) == len(think)
  assert set(prune_report['verdicts']) == set(stdio_judge.STDIO_STATUSES)
