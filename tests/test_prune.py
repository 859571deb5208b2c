"""Tests of the pruning strategies."""

import random

import pytest

from tpt_jax import prune
from tpt_jax import types
from tpt_jax import verify

REASONING = ('Natalia sold 48 clips in April and half as many in May, so '
             '48 / 2 = 24 clips in May and 48 + 24 = 72 in total.\n')


def _trace(problem_id='p1', sample_index=0, completion=REASONING + '#### 72',
           correct=True, num_tokens=None):
  return types.Trace(problem_id=problem_id, sample_index=sample_index,
                     prompt='Q: ...', completion=completion, correct=correct,
                     extracted_answer='72', num_tokens=num_tokens)


def _config(**overrides):
  config = prune.default_config()
  for key, value in overrides.items():
    config[key] = value
  return config


def test_default_keeps_only_correct_traces():
  traces = [_trace(sample_index=0, correct=True),
            _trace(sample_index=1, correct=False),
            _trace(sample_index=2, correct=None)]
  result = prune.prune(traces)
  assert [t.sample_index for t in result.kept] == [0]
  assert result.removed == {'correct': 2}


def test_none_keeps_everything():
  traces = [_trace(sample_index=i, correct=i % 2 == 0) for i in range(5)]
  result = prune.build_pipeline(_config(strategies='none'))(traces)
  assert len(result.kept) == 5
  assert result.removed == {'none': 0}


def test_dedup_per_problem_up_to_whitespace():
  traces = [
      _trace('p1', 0, 'a  b\n#### 1'),
      _trace('p1', 1, 'a b #### 1'),  # same text up to whitespace
      _trace('p1', 2, 'a c #### 1'),
      _trace('p2', 0, 'a b #### 1'),  # same text, other problem: kept
  ]
  result = prune.build_pipeline(_config(strategies='dedup'))(traces)
  assert [(t.problem_id, t.sample_index) for t in result.kept] == [
      ('p1', 0), ('p1', 2), ('p2', 0)]
  assert result.removed == {'dedup': 1}


def test_max_per_problem_keeps_lowest_sample_indices():
  traces = [_trace(p, i, f'{p} {i} {REASONING}') for p in ('a', 'b')
            for i in range(5)]
  random.Random(0).shuffle(traces)
  result = prune.build_pipeline(
      _config(strategies='correct,max_per_problem', max_per_problem=2))(traces)
  assert [(t.problem_id, t.sample_index) for t in result.kept] == [
      ('a', 0), ('a', 1), ('b', 0), ('b', 1)]
  assert result.removed == {'correct': 0, 'max_per_problem': 6}


def test_length_bounds_in_tokens_and_chars():
  traces = [_trace(sample_index=i, completion='x' * (10 * i), num_tokens=i)
            for i in range(1, 6)]
  by_tokens = prune.build_pipeline(
      _config(strategies='length', min_tokens=2, max_tokens=4))(traces)
  assert [t.num_tokens for t in by_tokens.kept] == [2, 3, 4]
  by_chars = prune.build_pipeline(
      _config(strategies='length', max_chars=30))(traces)
  assert [len(t.completion) for t in by_chars.kept] == [10, 20, 30]
  assert by_chars.removed == {'length': 2}


def test_length_by_tokens_needs_token_counts():
  with pytest.raises(ValueError, match='num_tokens'):
    prune.build_pipeline(_config(strategies='length', max_tokens=5))(
        [_trace(num_tokens=None)])


def test_repetition_filter_drops_degenerate_loops():
  loop = REASONING + 'and then we add it again ' * 40 + '#### 72'
  traces = [_trace(sample_index=0), _trace(sample_index=1, completion=loop)]
  result = prune.build_pipeline(_config(strategies='repetition'))(traces)
  assert [t.sample_index for t in result.kept] == [0]
  assert result.removed == {'repetition': 1}
  fraction, count = prune.repeated_ngram_fraction(loop, 4)
  assert fraction > 0.5 and count > 20


def test_no_reasoning_and_short_reasoning():
  traces = [
      _trace(sample_index=0, completion='#### 72'),
      _trace(sample_index=1, completion='The answer is 72.'),
      _trace(sample_index=2, completion='48 + 24 = 72.\nThe answer is 72.'),
      _trace(sample_index=3),
  ]
  no_reasoning = prune.build_pipeline(_config(strategies='no_reasoning'))
  assert [t.sample_index for t in no_reasoning(traces).kept] == [2, 3]
  short = prune.build_pipeline(
      _config(strategies='short_reasoning', min_reasoning_words=10))
  result = short(traces)
  assert [t.sample_index for t in result.kept] == [3]
  assert result.removed == {'short_reasoning': 3}


def test_composition_reports_each_filter_in_order():
  traces = ([_trace('p1', i, correct=i != 3) for i in range(6)] +
            [_trace('p2', 0, '#### 72')])
  config = _config(strategies='correct, dedup, no_reasoning, max_per_problem',
                   max_per_problem=1)
  result = prune.build_pipeline(config)(traces)
  assert list(result.removed) == ['correct', 'dedup', 'no_reasoning',
                                  'max_per_problem']
  assert result.removed == {'correct': 1, 'dedup': 4, 'no_reasoning': 1,
                            'max_per_problem': 0}
  assert result.num_removed == len(traces) - len(result.kept)
  assert [(t.problem_id, t.sample_index) for t in result.kept] == [('p1', 0)]
  assert 'kept 1/7' in prune.format_report(result, len(traces))
  metrics = prune.removed_counts_as_metrics(result)
  assert metrics['prune/removed_dedup'] == 4 and metrics['prune/kept'] == 1


def test_output_order_does_not_depend_on_input_order():
  traces = [_trace(f'p{i % 4}', i, f'{i} {REASONING}', correct=i % 3 != 0)
            for i in range(40)]
  pipeline = prune.build_pipeline(_config(strategies='correct,dedup'))
  expected = pipeline(traces).kept
  for seed in range(5):
    shuffled = list(traces)
    random.Random(seed).shuffle(shuffled)
    assert pipeline(shuffled).kept == expected


def test_strategies_accept_a_tuple_and_reject_unknown_names():
  assert prune.parse_strategies(('correct', 'dedup')) == ('correct', 'dedup')
  with pytest.raises(ValueError, match='dedupe'):
    prune.build_pipeline(_config(strategies='correct,dedupe'))
  with pytest.raises(ValueError, match='empty'):
    prune.build_pipeline(_config(strategies=' , '))
  with pytest.raises(ValueError, match='max_per_problem'):
    prune.build_pipeline(_config(strategies='max_per_problem',
                                 max_per_problem=0))


def test_code_config_builds_sandbox_limits():
  config = verify.default_config()
  config.code.timeout_s = 3.0
  limits = verify.sandbox_limits(config.code)
  assert limits.timeout_s == 3.0
  assert limits.memory_mb == config.code.memory_mb


def test_default_config_overrides_are_type_checked():
  config = prune.default_config()
  config.lock()
  config.strategies = 'none'
  with pytest.raises(TypeError):
    config.max_per_problem = 'four'
  with pytest.raises(AttributeError):
    config.strategys = 'none'


def test_first_correct_keeps_the_lowest_correct_sample_per_problem():
  traces = [_trace('a', 2, correct=True), _trace('a', 0, correct=False),
            _trace('a', 1, correct=True), _trace('b', 0, correct=False)]
  result = prune.build_pipeline(_config(strategies='first_correct'))(traces)
  assert [(t.problem_id, t.sample_index) for t in result.kept] == [('a', 1)]
  assert result.removed == {'first_correct': 3}


# --- the draw: training examples and held-out ones ---------------------------


def _legacy_cap(num_kept, cap, seed):
  """The training draw as prune_and_write made it before held-out examples
  existed: with num_heldout=0 it must stay exactly this."""
  if cap and num_kept > cap:
    return sorted(random.Random(seed).sample(range(num_kept), cap))
  return list(range(num_kept))


@pytest.mark.parametrize('num_kept, cap', [
    (2300, 2000), (2100, 2000), (2000, 2000), (50, 2000), (7, 0), (0, 3)])
def test_without_heldout_examples_the_draw_is_unchanged(num_kept, cap):
  draw = prune.draw_examples(num_kept, cap=cap, num_heldout=0, cap_seed=11,
                             heldout_seed=12)
  assert draw.train == _legacy_cap(num_kept, cap, 11)
  assert draw.heldout == []


@pytest.mark.parametrize('num_kept, cap, num_heldout, expected', [
    (2300, 2000, 200, 200),  # the paper's recipe: 2,000 + 200 more
    (2100, 2000, 200, 100),  # fewer beyond the draw: all of them
    (2000, 2000, 200, 0),  # nothing beyond the draw
    (50, 2000, 200, 0),
    (30, 0, 10, 10),  # no cap: held out of everything, the rest trains
    (5, 0, 10, 4),  # ... one always trains
    (1, 0, 10, 0),
])
def test_heldout_examples_are_disjoint_from_the_training_draw(
    num_kept, cap, num_heldout, expected):
  draw = prune.draw_examples(num_kept, cap=cap, num_heldout=num_heldout,
                             cap_seed=11, heldout_seed=12)
  assert len(draw.heldout) == expected
  assert not set(draw.train) & set(draw.heldout)
  assert draw.train == sorted(draw.train)
  assert draw.heldout == sorted(draw.heldout)
  assert set(draw.train) | set(draw.heldout) <= set(range(num_kept))
  if cap:
    # The training draw is the one without held-out examples.
    assert draw.train == _legacy_cap(num_kept, cap, 11)
    assert draw.num_dropped(num_kept) == (
        num_kept - min(cap, num_kept) - expected)
  else:
    assert len(draw.train) == num_kept - expected
    assert draw.num_dropped(num_kept) == 0
  # Seeded: the same seeds give the same draw, another held-out seed another.
  again = prune.draw_examples(num_kept, cap=cap, num_heldout=num_heldout,
                              cap_seed=11, heldout_seed=12)
  assert again == draw
  if 0 < expected < num_kept - len(draw.train):
    other = prune.draw_examples(num_kept, cap=cap, num_heldout=num_heldout,
                                cap_seed=11, heldout_seed=13)
    assert other.heldout != draw.heldout and other.train == draw.train


def test_num_heldout_examples_is_validated():
  prune.validate_config(_config(num_heldout_examples=200))
  with pytest.raises(prune.config_fields.ConfigError,
                     match='config.prune.num_heldout_examples=-1'):
    prune.validate_config(_config(num_heldout_examples=-1))
  with pytest.raises(prune.config_fields.ConfigError, match='repeats'):
    prune.validate_config(_config(strategies='correct,correct'))
