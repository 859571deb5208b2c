r"""Fuzzes the GSM8K and MATH graders with random and adversarial completions.

  python scripts/fuzz_verify.py [--num_completions=100000] [--seed=0]
      [--max_chars=20000] [--data_dir=../shared/data]

Each completion goes through every GSM8K grader (`default`, `paper_strict`)
and the MATH verifier (string and number normalization; sympy, which has its
own time limit, is left out). Completions: random text over an alphabet of
digits, markup, LaTeX and unicode (lone surrogates, NUL, right-to-left
marks, odd spaces, emoji), and adversarial families: nested and unbalanced
braces, `\frac{` and `\sqrt[` runs, runs of spaces after a marker, long
digit, comma and decimal runs, many `####` lines, markup-only answer lines,
and mutated GSM8K train solutions. Prints the number of calls, exceptions
(raised, or caught inside a verifier and reported as 'internal error'),
calls over 0.5 s (wall clock and CPU time) and the slowest call; the 5
slowest are re-timed, to tell a slow input from a pause of a busy machine.
Target: 0 exceptions, no call over 0.5 s.
"""

from __future__ import annotations

import argparse
import heapq
from collections.abc import Callable, Iterator
import pathlib
import random
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
from tpt_jax import sources
from tpt_jax.verify import graders
from tpt_jax.verify import math_latex
# pylint: enable=g-import-not-at-top,wrong-import-position

SLOW_S = 0.5
_ALPHABET = ('0123456789' * 3 + ',./-+$%#*:_=~`>[](){}^ \n\t' +
             'abcxyzAnswerisboxedfracsqrtLetmeknow' +
             '\\' * 4 + '\u2212\u2013\u00a0\u2009\u202f\u200f\u0301' +
             '\ud800\udfff\x00€£¥½²٣۴' + '😀🧮')
_MARKERS = ('####', '#### ', '**#### ', '** #### **\n', 'The answer is ',
            'Answer:', '**4. Answer:**\n', '\\boxed{', '\\fbox{',
            'The final answer is $', '<<', '>>', '\\frac{', '\\dfrac',
            '\\sqrt[', '\\text{', '\\left(', '^{\\circ}', "Let me know if ")


def _random_text(rng: random.Random, max_chars: int) -> str:
  length = min(max_chars, int(rng.expovariate(1 / 200)))
  return ''.join(rng.choice(_ALPHABET) for _ in range(length))


def _adversarial(rng: random.Random, max_chars: int,
                 solutions: list[str]) -> str:
  """One completion of a randomly chosen hostile family."""
  n = rng.randint(1, max(1, max_chars // 8))
  marker = rng.choice(_MARKERS)
  family = rng.randrange(12)
  if family == 0:  # Nested or unbalanced braces.
    text = marker + '{' * n + rng.choice(['', '5', 'x']) + '}' * rng.randint(
        0, n)
  elif family == 1:  # Runs of \frac{ or \sqrt[, with or without spaces.
    text = marker + rng.choice(['\\frac{', '\\frac{ ', '\\sqrt[', '\\frac'
                                ]) * (n // 6 + 1)
  elif family == 2:  # A marker then a run of spaces and no closing.
    text = marker + rng.choice([' ', '\t', '\u00a0', '\n', '  x']) * n + (
        rng.choice(['', '9x', '}', '$']))
  elif family == 3:  # Long digit, comma-group and decimal runs.
    text = marker + rng.choice(['1', '1,111', ',111', '1.', '0', '1/']) * (
        n // 4 + 1) + rng.choice(['', 'x', '.', '%', '}'])
  elif family == 4:  # Many #### lines, headings and markup-only lines.
    line = rng.choice(['#### \n', '** #### **\n', '#### Step 1: a\n',
                       '#### 3. Add\n', '####', '#### 5 5\n', '\n'])
    text = line * (n // len(line) + 1) + rng.choice(['', '5', '**5**'])
  elif family == 5:  # Leading noise before a number.
    text = marker + rng.choice(['\\(', '$', '[', '(', '=', ': ', '**']) * (
        n // 2 + 1) + rng.choice(['5', '-5', 'x'])
  elif family == 6:  # A mutated real solution.
    chars = list(rng.choice(solutions))
    for _ in range(rng.randint(1, 20)):
      chars.insert(rng.randrange(len(chars) + 1),
                   rng.choice(_MARKERS + tuple(_ALPHABET)))
    text = ''.join(chars)
  elif family == 7:  # Calculator annotations without an end.
    text = '<<' * (n // 2) + rng.choice(['', '>', 'x' * n])
  elif family == 8:  # Chatter, repeated.
    text = rng.choice(solutions) + (
        "\nLet me know if you'd like 3 more! " * (n // 30 + 1))
  elif family == 9:  # \text{ and units without an end.
    text = '\\boxed{5' + ' ' * n + '\\text{' + 'a ' * (n // 2)
  elif family == 10:  # Whole hours, percents, currencies in a run.
    text = marker + rng.choice(['2:00 ', '25% ', '$5 ', '3 ', '-$5 ']) * (
        n // 4 + 1)
  else:  # A concatenation of random pieces.
    text = ''.join(rng.choice(_MARKERS) + _random_text(rng, 50)
                   for _ in range(n // 40 + 1))
  return text[:max_chars]


def completions(num: int, seed: int, max_chars: int,
                solutions: list[str]) -> Iterator[str]:
  rng = random.Random(seed)
  for index in range(num):
    if index % 2:
      yield _adversarial(rng, max_chars, solutions)
    else:
      yield _random_text(rng, max_chars)


def _graders() -> dict[str, Callable[[str, str], object]]:
  calls: dict[str, Callable[[str, str], object]] = {
      f'gsm8k/{name}': graders.get_grader(name)
      for name in graders.GRADER_NAMES}
  calls['math'] = lambda completion, reference: math_latex.verify_math(
      completion, reference, checker=None)
  return calls


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_completions', type=int, default=100_000)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--max_chars', type=int, default=20_000)
  parser.add_argument('--data_dir', type=pathlib.Path,
                      default=REPO_ROOT / '..' / 'shared' / 'data')
  args = parser.parse_args()
  solutions = [p.solution for p in
               sources.load_gsm8k(args.data_dir / 'gsm8k', 'train')[:2000]]
  references = ('5', '18', '1,000', '\\frac{1}{2}', '#### 72', 'x')
  calls = _graders()
  num_calls = exceptions = slow = slow_cpu = 0
  slowest: list[tuple[float, int, str, str]] = []  # A heap of the 5 slowest.
  slowest_cpu = 0.0
  first_error = ''
  start = time.perf_counter()
  for index, completion in enumerate(completions(
      args.num_completions, args.seed, args.max_chars, solutions)):
    reference = references[index % len(references)]
    for name, grade in calls.items():
      call_start = time.perf_counter()
      cpu_start = time.process_time()
      try:
        verdict = grade(completion, reference)
        failed = getattr(verdict, 'reason', '').startswith('internal error')
        error = verdict.reason if failed else ''
      except Exception as e:  # pylint: disable=broad-except
        failed, error = True, f'{type(e).__name__}: {e}'
      elapsed = time.perf_counter() - call_start
      cpu = time.process_time() - cpu_start
      num_calls += 1
      exceptions += failed
      if failed and not first_error:
        first_error = f'{name} on {completion[:80]!r}: {error[:200]}'
      slow += elapsed > SLOW_S
      slow_cpu += cpu > SLOW_S
      slowest_cpu = max(slowest_cpu, cpu)
      entry = (elapsed, num_calls, name, completion)
      if len(slowest) < 5:
        heapq.heappush(slowest, entry)
      elif entry > slowest[0]:
        heapq.heapreplace(slowest, entry)
  total = time.perf_counter() - start
  elapsed, _, name, completion = max(slowest)
  retimed = []
  for _, _, other_name, other in slowest:
    retime_start = time.perf_counter()
    calls[other_name](other, '5')
    retimed.append(time.perf_counter() - retime_start)
  print(f'completions: {args.num_completions:,} (seed {args.seed}, up to '
        f'{args.max_chars:,} chars); graders: {", ".join(calls)}')
  print(f'calls: {num_calls:,} in {total:.1f} s; exceptions: {exceptions}; '
        f'calls over {SLOW_S:g} s: {slow} (wall clock), {slow_cpu} (CPU time)')
  print(f'slowest call: {elapsed:.4f} s wall ({name}, {len(completion):,} '
        f'chars: {completion[:50]!r}...); slowest in CPU time: '
        f'{slowest_cpu:.4f} s; the 5 slowest re-timed: at most '
        f'{max(retimed):.4f} s')
  if first_error:
    print(f'first exception: {first_error}')


if __name__ == '__main__':
  main()
