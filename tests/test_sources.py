"""Tests of the problem sources (GSM8K, MBPP, HumanEval)."""

import gzip
import json
import logging
import pathlib

import pytest

from tpt_jax import sources

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / '..' / 'shared' / 'data'
GSM8K_DIR = DATA_DIR / 'gsm8k'
MBPP = DATA_DIR / 'mbpp' / 'mbpp.jsonl'
HUMANEVAL = DATA_DIR / 'humaneval' / 'HumanEval.jsonl.gz'


def _write_jsonl(path, rows):
  path.write_text(''.join(r if isinstance(r, str) else json.dumps(r) + '\n'
                          for r in rows))
  return path


def test_gsm8k_jsonl_splits():
  train = sources.load_gsm8k(GSM8K_DIR, 'train')
  test = sources.load_gsm8k(GSM8K_DIR / 'test.jsonl', 'test')
  assert (len(train), len(test)) == (7473, 1319)
  first = train[0]
  assert first.problem_id == 'gsm8k/train/0'
  assert first.question.startswith('Natalia sold clips')
  assert first.answer == '72'
  assert first.solution.endswith('#### 72')
  assert not first.is_code
  assert len({p.problem_id for p in train}) == len(train)
  assert test[-1].problem_id == 'gsm8k/test/1318'


def test_gsm8k_ids_are_stable_when_a_line_is_skipped(tmp_path, caplog):
  good = {'question': 'q', 'answer': 'a\n#### 3'}
  path = _write_jsonl(tmp_path / 'train.jsonl',
                      [good, '{"question": "broken"\n', good, '\n', good])
  with caplog.at_level(logging.WARNING):
    problems = sources.load_gsm8k(path, 'train', on_error='skip')
  assert [p.problem_id for p in problems] == [
      'gsm8k/train/0', 'gsm8k/train/2', 'gsm8k/train/3']
  assert 'Skipped 1 malformed line' in caplog.text
  assert f'{path}:2' in caplog.text


@pytest.mark.parametrize('line,reason', [
    ('{"question": "q"', 'Expecting'),  # not JSON
    ('[1, 2]', 'expected a JSON object'),
    ('{"question": "q"}', "missing field 'answer'"),
    ('{"question": "q", "answer": 5}', "'answer' must be a string"),
    ('{"question": "q", "answer": "no final line"}', '####'),
    ('{"question": "q", "answer": "a\\n#### Bob"}',
     "GSM8K answer '#### Bob' is not a number"),
])
def test_malformed_gsm8k_line_raises_naming_file_and_line(tmp_path, line,
                                                          reason):
  good = {'question': 'q', 'answer': 'a\n#### 3'}
  path = _write_jsonl(tmp_path / 'bad.jsonl', [good, good, line + '\n'])
  with pytest.raises(sources.MalformedInputError) as error:
    sources.load_gsm8k(path, 'train')
  assert f'{path}:3' in str(error.value)
  assert reason in str(error.value)


def test_skip_warning_counts_and_locates_every_bad_line(tmp_path, caplog):
  good = {'question': 'q', 'answer': 'a\n#### 3'}
  rows = [good] + ['not json\n'] * 12 + [good]
  path = _write_jsonl(tmp_path / 'bad.jsonl', rows)
  with caplog.at_level(logging.WARNING):
    problems = sources.load_gsm8k(path, 'train', on_error='skip')
  assert len(problems) == 2
  assert 'Skipped 12 malformed line(s)' in caplog.text
  assert f'{path}:2:' in caplog.text and 'and 2 more' in caplog.text


def test_undecodable_and_deeply_nested_lines_are_malformed(tmp_path):
  good = json.dumps({'question': 'q', 'answer': 'a\n#### 3'}).encode() + b'\n'
  path = tmp_path / 'mixed.jsonl'
  path.write_bytes(good + b'\xff\xfe not utf-8\n' + b'[' * 100_000 + b'\n' +
                   good)
  problems = sources.load_gsm8k(path, 'train', on_error='skip')
  assert [p.problem_id for p in problems] == ['gsm8k/train/0',
                                              'gsm8k/train/3']
  with pytest.raises(sources.MalformedInputError, match=f'{path}:2'):
    sources.load_gsm8k(path, 'train')


def test_on_error_is_validated(tmp_path):
  path = _write_jsonl(tmp_path / 'x.jsonl', [])
  with pytest.raises(ValueError, match='on_error'):
    sources.load_gsm8k(path, on_error='ignore')


@pytest.mark.parametrize('on_error', ['raise', 'skip'])
def test_empty_file_is_an_error_naming_it(tmp_path, on_error):
  path = _write_jsonl(tmp_path / 'train.jsonl', ['\n', '  \n'])
  with pytest.raises(sources.MalformedInputError,
                     match=f'{path}: the file holds no records'):
    sources.load_gsm8k(path, 'train', on_error=on_error)
  with pytest.raises(sources.MalformedInputError, match=str(path)):
    sources.load_mbpp(path, 'train')


def test_missing_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.jsonl'):
    sources.load_gsm8k(tmp_path / 'nope.jsonl')


def test_gsm8k_from_tfds():
  tfds = pytest.importorskip('tensorflow_datasets')
  tf = pytest.importorskip('tensorflow')
  rows = [json.loads(line) for line in
          (GSM8K_DIR / 'test.jsonl').read_text().splitlines()[:3]]

  def as_dataset_fn(*unused_args, **unused_kwargs):
    return tf.data.Dataset.from_tensor_slices({
        'question': [r['question'] for r in rows],
        'answer': [r['answer'] for r in rows],
        'annotation': [''] * len(rows),
        'short_answer': [''] * len(rows),
    })

  with tfds.testing.mock_data(as_dataset_fn=as_dataset_fn):
    from_tfds = sources.load_gsm8k('tfds', 'test')
  from_jsonl = sources.load_gsm8k(GSM8K_DIR, 'test')[:3]
  assert from_tfds == from_jsonl


def test_mbpp_standard_splits():
  sizes = {split: len(sources.load_mbpp(MBPP, split))
           for split in ('train', 'test', 'validation', 'prompt', 'full')}
  assert sizes == {'train': 374, 'test': 500, 'validation': 90, 'prompt': 10,
                   'full': 974}
  test = sources.load_mbpp(MBPP, 'test')
  assert test[0].problem_id == 'mbpp/11'
  assert test[-1].problem_id == 'mbpp/510'
  first = sources.load_mbpp(MBPP, 'prompt')[0]
  assert first.is_code
  assert first.test_list[0].startswith('assert min_cost(')
  assert 'def min_cost' in first.answer
  with pytest.raises(ValueError, match='MBPP split'):
    sources.load_mbpp(MBPP, 'dev')


def test_mbpp_malformed_test_list(tmp_path):
  path = _write_jsonl(tmp_path / 'mbpp.jsonl', [
      {'task_id': 601, 'text': 't', 'code': 'c', 'test_list': 'assert 1'}])
  with pytest.raises(sources.MalformedInputError, match=f'{path}:1'):
    sources.load_mbpp(path, 'train')


def test_humaneval_gzip_and_plain(tmp_path):
  problems = sources.load_humaneval(HUMANEVAL)
  assert len(problems) == 164
  first = problems[0]
  assert first.problem_id == 'HumanEval/0'
  assert first.entry_point == 'has_close_elements'
  assert 'def check(candidate)' in first.test_code
  assert first.solution == first.question + first.answer
  with gzip.open(HUMANEVAL, 'rt') as f:
    lines = [next(f) for _ in range(3)]
  plain = tmp_path / 'HumanEval.jsonl'
  plain.write_text(''.join(lines))
  assert sources.load_humaneval(plain) == problems[:3]


def test_default_config_is_plain_and_valid():
  config = sources.default_config()
  assert config.on_malformed_line in sources.ON_ERROR_CHOICES
