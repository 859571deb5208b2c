"""Tests of tpt_jax.evaluate: pass@k, maj@k, Pass@1 and eval.json writing."""

import fractions
import itertools
import math

import pytest

from tpt_jax import evaluate


def _pass_at_k_by_binomials(n, c, k):
  """The definition, in exact rational arithmetic."""
  return float(1 - fractions.Fraction(math.comb(n - c, k), math.comb(n, k)))


# ---------------------------------------------------------------- pass@k ----

@pytest.mark.parametrize('n, c, k, expected', [
    (5, 2, 1, 0.4),
    (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10.
    (10, 0, 1, 0.0),
    (10, 0, 10, 0.0),
    (10, 10, 1, 1.0),
    (10, 10, 10, 1.0),
    (4, 1, 4, 1.0),  # k = n: one correct sample is always drawn.
    (4, 3, 2, 1.0),  # n - c < k: every pair holds a correct one.
    (1, 1, 1, 1.0),
    (1, 0, 1, 0.0),
])
def test_pass_at_k_hand_computed(n, c, k, expected):
  assert evaluate.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_binomial_definition():
  for n in range(1, 13):
    for c in range(n + 1):
      for k in range(1, n + 1):
        assert evaluate.pass_at_k(n, c, k) == pytest.approx(
            _pass_at_k_by_binomials(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_many_samples():
  # C(1000, 500) overflows a float; the product form does not need it.
  value = evaluate.pass_at_k(1000, 3, 500)
  assert value == pytest.approx(_pass_at_k_by_binomials(1000, 3, 500),
                                rel=1e-12)
  assert 0.0 <= value <= 1.0


def test_pass_at_k_with_one_sample_is_the_fraction_correct():
  assert evaluate.pass_at_k(16, 5, 1) == pytest.approx(5 / 16)


@pytest.mark.parametrize('n, c', [(8, 1), (8, 3), (20, 2), (7, 0), (7, 7)])
def test_pass_at_k_is_monotone_in_k(n, c):
  values = [evaluate.pass_at_k(n, c, k) for k in range(1, n + 1)]
  assert values == sorted(values)


def test_pass_at_k_is_monotone_in_num_correct():
  values = [evaluate.pass_at_k(10, c, 3) for c in range(11)]
  assert values == sorted(values)


@pytest.mark.parametrize('args, names', [
    ((5, 2, 6), ['k=6', 'num_samples=5']),
    ((5, 6, 1), ['num_correct=6', 'num_samples=5']),
    ((-1, 0, 1), ['num_samples=-1']),
    ((5, -2, 1), ['num_correct=-2']),
    ((5, 2, 0), ['k=0']),
    ((5, 2, 1.5), ['k=1.5']),
    ((5.0, 2, 1), ['num_samples=5.0']),
    ((5, True, 1), ['num_correct=True']),
])
def test_pass_at_k_bad_input_names_the_argument(args, names):
  with pytest.raises(ValueError) as error:
    evaluate.pass_at_k(*args)
  for name in names:
    assert name in str(error.value)


# ------------------------------------------------------- greedy Pass@1 ------

def test_pass_at_1_greedy_is_the_fraction_correct():
  assert evaluate.pass_at_1_greedy([True, False, True, True]) == 0.75
  assert evaluate.pass_at_1_greedy([False, False]) == 0.0
  assert evaluate.pass_at_1_greedy([True]) == 1.0


def test_pass_at_1_greedy_refuses_empty_and_non_bool():
  with pytest.raises(ValueError, match='empty'):
    evaluate.pass_at_1_greedy([])
  with pytest.raises(ValueError, match=r'correct\[1\]'):
    evaluate.pass_at_1_greedy([True, 'yes'])


# ---------------------------------------------------------------- maj@k -----

def test_maj_at_k_majority_wins():
  answers = ['7', '3', '7', '5', '7']
  assert evaluate.maj_at_k(answers, '7', 5)
  assert not evaluate.maj_at_k(answers, '3', 5)


def test_maj_at_k_only_the_first_k_vote():
  answers = ['3', '3', '7', '7', '7']
  assert evaluate.maj_at_k(answers, '3', 2)
  assert evaluate.maj_at_k(answers, '7', 5)


def test_maj_at_k_ignores_unparseable_answers():
  assert evaluate.majority_answer(['7', None, None, None, '3', '7'], 6) == '7'
  assert evaluate.maj_at_k([None, None, '4'], '4', 3)
  # Unparseable answers are not a vote for "no answer".
  assert evaluate.maj_at_k([None, '4', None], '4', 3)


def test_maj_at_k_without_any_answer_is_wrong():
  assert evaluate.majority_answer([None, None], 2) is None
  assert not evaluate.maj_at_k([None, None], '4', 2)


def test_maj_at_k_tie_goes_to_the_answer_that_appeared_first():
  assert evaluate.majority_answer(['3', '7'], 2) == '3'
  assert evaluate.majority_answer(['7', '3'], 2) == '7'
  assert evaluate.majority_answer(['3', '7', '7', '3'], 4) == '3'
  assert evaluate.majority_answer([None, '9', '7', '7', '9'], 5) == '9'
  assert evaluate.maj_at_k(['3', '7', '7', '3'], '3', 4)
  assert not evaluate.maj_at_k(['3', '7', '7', '3'], '7', 4)


def test_maj_at_k_tie_rule_holds_for_every_order():
  votes = ['a', 'a', 'b', 'b', 'c', None]
  for order in set(itertools.permutations(votes)):
    first_tied = next(answer for answer in order if answer in ('a', 'b'))
    assert evaluate.majority_answer(order, len(order)) == first_tied, order


def test_maj_at_k_clear_majority_is_independent_of_order():
  votes = ['5', '5', '5', '2', '2', '8', None]
  for order in set(itertools.permutations(votes)):
    assert evaluate.majority_answer(order, len(order)) == '5', order


def test_maj_at_k_compares_after_normalisation():
  strip_zeros = lambda answer: answer.strip().lstrip('0') or '0'
  answers = ['007', ' 7', '3', '3']
  # '007' and ' 7' are one answer with two votes; it appeared first.
  assert evaluate.maj_at_k(answers, '7', 4, normalize=strip_zeros)
  assert not evaluate.maj_at_k(answers, '7', 4)  # Raw strings: '3' wins.


def test_maj_at_k_normaliser_returning_none_means_no_vote():
  as_int = lambda answer: str(int(answer)) if answer.isdigit() else None
  assert evaluate.maj_at_k(['x', 'y', 'z', '4'], '4', 4, normalize=as_int)


def test_maj_at_k_takes_a_custom_equality():
  close = lambda a, b: abs(float(a) - float(b)) < 1e-9
  answers = ['0.5', '.5', '2', '2.0', '0.50']
  assert evaluate.majority_answer(answers, 5, equal=close) == '0.5'
  assert evaluate.maj_at_k(answers, '0.500', 5,
                           equal=close)


def test_maj_at_k_bad_input_is_named():
  with pytest.raises(ValueError, match='k=4'):
    evaluate.maj_at_k(['1', '2', '3'], '1', 4)
  with pytest.raises(ValueError, match='k=0'):
    evaluate.maj_at_k(['1'], '1', 0)
  with pytest.raises(ValueError, match="reference='n/a'"):
    evaluate.maj_at_k(['1'], 'n/a', 1,
                      normalize=lambda a: a if a.isdigit() else None)


# ------------------------------------------------------------- aggregate ----

def _records():
  return [
      evaluate.ProblemRecord(
          problem_id='p0', greedy_correct=True,
          sample_correct=[True, False, False, True],
          sample_answers=['4', '5', '5', '4'], reference='4'),
      evaluate.ProblemRecord(
          problem_id='p1', greedy_correct=False,
          sample_correct=[False, False, False, False],
          sample_answers=['1', None, '1', '2'], reference='9'),
  ]


def test_evaluate_records_hand_computed():
  result = evaluate.evaluate_records(_records(), ks=(2, 4))
  # p0: n=4, c=2: pass@2 = 1 - C(2,2)/C(4,2) = 5/6; maj@2 tie '4' vs '5' ->
  # '4' (first) is right; maj@4 tie again -> '4'. p1: all wrong.
  assert result.to_dict() == pytest.approx({
      'pass@1': 0.5,
      'pass@2': (5 / 6 + 0) / 2,
      'pass@4': (1 + 0) / 2,
      'maj@2': 0.5,
      'maj@4': 0.5,
      'num_problems': 2,
  })
  assert isinstance(result.to_dict()['num_problems'], int)


def test_evaluate_records_metrics_are_fractions():
  metrics = evaluate.evaluate_records(_records(), ks=(1, 2, 3, 4)).to_dict()
  for name, value in metrics.items():
    if name != 'num_problems':
      assert 0.0 <= value <= 1.0, name


def test_evaluate_records_keeps_greedy_pass_at_1_apart_from_sampled():
  metrics = evaluate.evaluate_records(_records(), ks=(1,)).to_dict()
  assert metrics['pass@1'] == 0.5  # Greedy.
  assert metrics['pass@1_sampled'] == pytest.approx((2 / 4 + 0) / 2)


def test_evaluate_records_without_greedy_leaves_pass_at_1_out():
  records = [evaluate.ProblemRecord('p0', None, [True], ['1'], '1')]
  result = evaluate.evaluate_records(records, ks=(1,))
  assert result.pass_at_1 is None
  assert 'pass@1' not in result.to_dict()


@pytest.mark.parametrize('records, message', [
    ([], 'empty'),
    ([evaluate.ProblemRecord('p0', True, [True, True], ['1', '1'], '1'),
      evaluate.ProblemRecord('p0', True, [True, True], ['1', '1'], '1')],
     "problem_id='p0' appears in more than one"),
    ([evaluate.ProblemRecord('p7', True, [True], ['1'], '1')],
     "problem_id='p7' has 1 samples, fewer than k=2"),
    ([evaluate.ProblemRecord('p3', True, [True, True], ['1'], '1')],
     "problem_id='p3': sample_correct has 2 entries"),
    ([evaluate.ProblemRecord('p0', True, [True, True], ['1', '1'], '1'),
      evaluate.ProblemRecord('p1', None, [True, True], ['1', '1'], '1')],
     'greedy_correct is set for 1 of 2'),
])
def test_evaluate_records_bad_input_is_named(records, message):
  with pytest.raises(ValueError, match=message):
    evaluate.evaluate_records(records, ks=(2,))


# ------------------------------------------------------- eval.json writes ---


def test_sampled_pass_at_1_is_the_mean_over_samples_with_its_standard_error():
  metrics = evaluate.evaluate_records(_records(), ks=(1, 4)).to_dict()
  per_problem = [2 / 4, 0.0]
  assert metrics['pass@1_sampled'] == pytest.approx(sum(per_problem) / 2)
  # Sample standard deviation across problems / sqrt(problems).
  assert metrics['pass@1_sampled_se'] == pytest.approx(
      math.sqrt(((0.5 - 0.25) ** 2 + (0 - 0.25) ** 2) / 1) / math.sqrt(2))
