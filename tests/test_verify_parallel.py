"""Tests of verification in worker processes with a per-item time limit."""

import functools
import os
import pathlib
import time

import pytest

from tpt_jax import sources
from tpt_jax.tasks import gsm8k
from tpt_jax.verify import graders
from tpt_jax.verify import math_answers
from tpt_jax.verify import parallel

DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data'
HANG = 'HANG'


def _verify_or_misbehave(completion, reference):
  """verify_gsm8k, except on the markers: hang, raise, or kill the worker."""
  if completion == HANG:
    time.sleep(600)
  if completion == 'RAISE':
    raise ValueError('bad item')
  if completion == 'EXIT':
    os._exit(3)  # pylint: disable=protected-access
  return math_answers.verify_gsm8k(completion, reference)


def test_equals_serial_verification_on_gsm8k_train():
  train = gsm8k.TASK.load_problems('train', _gsm8k_config())
  solutions = sources.load_gsm8k(DATA_DIR / 'gsm8k', 'train')
  # Completions: the train solutions, and each with its answer changed.
  completions = [s.solution for s in solutions]
  completions += [s.solution + '1' for s in solutions[:1000]]
  problems = train + train[:1000]
  items = list(zip(completions, problems))
  serial = [gsm8k.TASK.verify(c, p) for c, p in items]
  verdicts = parallel.verify_in_workers(gsm8k.TASK.verify, items,
                                        timeout_s=10.0, num_workers=2)
  assert [(v.correct, v.extracted) for v in verdicts] == serial
  assert all(v.reason == '' for v in verdicts)
  assert sum(v.correct for v in verdicts) == len(train)  # The +1 ones fail.


def _gsm8k_config():
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict({'gsm8k_path': str(DATA_DIR / 'gsm8k'),
                                    'on_malformed_line': 'error'})


def test_a_hanging_item_does_not_stall_the_rest():
  items = [(f'So the total is {i}.\n#### {i}', str(i)) for i in range(200)]
  items[7] = (HANG, '7')
  items[150] = (HANG, '150')
  with parallel.WorkerPool(_verify_or_misbehave, timeout_s=1.0,
                           num_workers=2) as pool:
    pool.verify(items[:2])  # Workers started: start-up is not measured.
    start = time.perf_counter()
    verdicts = pool.verify(items)
    elapsed = time.perf_counter() - start
  # Two hanging items on two workers: about one limit each, not 600 s each
  # (replacement workers start meanwhile; their start-up is not part of
  # any item's limit).
  assert elapsed < 2 * 1.0 + 6.0, elapsed
  for index, verdict in enumerate(verdicts):
    if index in (7, 150):
      assert verdict == parallel.ItemVerdict(False, None,
                                             'timed out after 1 s', 1.0)
    else:
      assert verdict.correct and verdict.extracted == str(index), verdict


def test_raising_and_crashing_items_are_judged_incorrect_with_a_reason():
  items = [('#### 1', '1'), ('RAISE', '1'), ('EXIT', '1'), ('#### 2', '2'),
           ('#### 2', '3')]
  verdicts = parallel.verify_in_workers(_verify_or_misbehave, items,
                                        timeout_s=5.0, num_workers=1)
  assert [v.correct for v in verdicts] == [True, False, False, True, False]
  assert verdicts[1].reason == 'raised ValueError: bad item'
  assert verdicts[2].reason == 'worker exited with code 3'
  assert verdicts[4].reason == '' and verdicts[4].extracted == '2'


def test_graders_run_in_workers():
  items = [('#### 1,000', '1,000'), ('#### 1,000', '1000')]
  strict = parallel.verify_in_workers(graders.get_grader('paper_strict'),
                                      items, num_workers=1)
  assert [v.correct for v in strict] == [True, False]


def test_bad_arguments_are_refused():
  with pytest.raises(TypeError, match='cannot be sent to a worker process'):
    parallel.verify_in_workers(lambda c, p: (True, None), [('x', 'y')])
  with pytest.raises(ValueError, match='timeout_s=0 must be > 0'):
    parallel.verify_in_workers(math_answers.verify_gsm8k, [('x', 'y')],
                               timeout_s=0)
  with pytest.raises(ValueError, match='num_workers=-1 must be >= 0'):
    parallel.verify_in_workers(math_answers.verify_gsm8k, [('x', 'y')],
                               num_workers=-1)
  assert parallel.verify_in_workers(math_answers.verify_gsm8k, []) == []


def test_partial_functions_are_accepted():
  verify = functools.partial(math_answers.verify_gsm8k,
                             last_number_fallback=False)
  verdicts = parallel.verify_in_workers(
      verify, [('she has 12 left', '12'), ('#### 12', '12')], num_workers=1)
  assert [v.correct for v in verdicts] == [False, True]


def test_gsm8k_task_grades_by_each_grader_in_workers():
  from tpt_jax import verify  # pylint: disable=g-import-not-at-top
  from tpt_jax import tasks  # pylint: disable=g-import-not-at-top
  problems = [tasks.Problem('gsm8k/test/0', 'q', '1000'),
              tasks.Problem('gsm8k/test/1', 'q', '25')]
  completions = ['#### 1000', '**#### Answer: $25**']
  verify_config = verify.default_config()
  by_grader = {}
  for grader in gsm8k.TASK.grader_names:
    serial = gsm8k.TASK.verify_many(completions, problems, verify_config,
                                    grader=grader)
    verdicts = parallel.verify_in_workers(
        gsm8k.TASK.verifier(verify_config, grader),
        list(zip(completions, problems)), num_workers=1)
    assert [(v.correct, v.extracted) for v in verdicts] == serial
    by_grader[grader] = [correct for correct, _ in serial]
  assert by_grader == {'default': [True, True],
                       'paper_strict': [True, False]}
  with pytest.raises(ValueError, match="known graders: default, "
                     "paper_strict"):
    gsm8k.TASK.verifier(verify_config, 'lenient')


def _hang_on_marker(verify, completion, problem):
  if completion == HANG:
    time.sleep(90)  # (Long enough to fail the test below, done serially.)
  return verify(completion, problem)


class _Gsm8kWithAHang:
  """GSM8K whose verifier hangs on the HANG completion."""
  name = 'gsm8k'

  def verifier(self, verify_config):
    return functools.partial(_hang_on_marker,
                             gsm8k.TASK.verifier(verify_config))


def test_a_stage_verifies_in_workers_and_one_hang_does_not_stall_it():
  """stages.verify_completions (think, eval): each completion within
  config.verify.timeout_s, in workers (it once verified serially in the
  main process, where one completion could stall the stage)."""
  import types  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from tpt_jax import stages  # pylint: disable=g-import-not-at-top
  from tpt_jax import tasks  # pylint: disable=g-import-not-at-top
  from tpt_jax import verify  # pylint: disable=g-import-not-at-top
  verify_config = verify.default_config()
  verify_config.timeout_s = 1.0
  verify_config.num_workers = 2
  ctx = types.SimpleNamespace(
      config=ml_collections.ConfigDict({'verify': verify_config}),
      task=_Gsm8kWithAHang())
  problems = [tasks.Problem(f'gsm8k/test/{i}', 'q', str(i))
              for i in range(6)]
  completions = [f'#### {i}' for i in range(6)]
  completions[2] = HANG
  start = time.perf_counter()
  verdicts = stages.verify_completions(ctx, completions, problems)
  # Worker start-up included; serially, the hang alone takes 90 s.
  assert time.perf_counter() - start < 60.0
  assert verdicts == [(i != 2, None if i == 2 else str(i)) for i in range(6)]
