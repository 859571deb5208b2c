r"""Writes tests/data/stdio_problems.jsonl: small problems for the stdio judge.

  python tests/data/build_stdio_problems.py

Each line is one problem in the Hugging Face `deepmind/code_contests` layout
(name, description, public/private/generated tests as {input: [...],
output: [...]}, time_limit {seconds, nanos}, difficulty, solutions
{language: [3], solution: [...]}) plus a field only the tests read,
`test_programs`: a correct, a wrong-answer, a too-slow and a crashing
program, keyed by the verdict each must get. Expected outputs come from the
`solve` functions here, written independently of the correct programs.
"""

import json
import math
import pathlib

OUT = pathlib.Path(__file__).resolve().parent / 'stdio_problems.jsonl'
PYTHON3 = 3  # CodeContests' language id of Python 3.

# name: (description, solve(input) -> output, inputs (the last ones go to
# private and generated tests), programs by verdict).
PROBLEMS = {}


def problem(name, description, solve, inputs, correct, wrong, slow, crash):
  PROBLEMS[name] = dict(description=description, solve=solve, inputs=inputs,
                        programs={'passed': correct, 'wrong_answer': wrong,
                                  'timeout': slow, 'runtime_error': crash})


def ints(text):
  return list(map(int, text.split()))


problem(
    'sum_two', 'Print a + b.',
    lambda s: f'{sum(ints(s))}\n', ['1 2\n', '-5 5\n', '3 1000000000\n'],
    'a, b = map(int, input().split())\nprint(a + b)\n',
    'a, b = map(int, input().split())\nprint(a - b)\n',
    'a, b = map(int, input().split())\ns = a\nfor _ in range(b):\n'
    '  s += 1\nprint(s)\n',
    'a = int(input())\nprint(a)\n')
problem(
    'sum_to_n', 'Print 1 + 2 + ... + n modulo 1000000007.',
    lambda s: f'{ints(s)[0] * (ints(s)[0] + 1) // 2 % 1000000007}\n',
    ['3\n', '10\n', '1000000000000\n'],
    'n = int(input())\nprint(n * (n + 1) // 2 % 1000000007)\n',
    'n = int(input())\nprint(n * (n - 1) // 2 % 1000000007)\n',
    'n = int(input())\nt = 0\nfor i in range(1, n + 1):\n'
    '  t = (t + i) % 1000000007\nprint(t)\n',
    'n = int(input())\nprint(n // (n - 3))\n')


def _fib(n):
  a, b = 0, 1
  for _ in range(n):
    a, b = b, a + b
  return a


problem(
    'fibonacci', 'Print the n-th Fibonacci number (F(0) = 0, F(1) = 1).',
    lambda s: f'{_fib(ints(s)[0])}\n', ['0\n', '10\n', '90\n'],
    'n = int(input())\na, b = 0, 1\nfor _ in range(n):\n  a, b = b, a + b\n'
    'print(a)\n',
    'n = int(input())\na, b = 1, 1\nfor _ in range(n):\n  a, b = b, a + b\n'
    'print(a)\n',
    'def f(n):\n  return n if n < 2 else f(n - 1) + f(n - 2)\n'
    'print(f(int(input())))\n',
    'def f(n):\n  return f(n - 1) + f(n - 2)\nprint(f(int(input())))\n')
def _divisor_count(n):
  small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
  return len(set(small) | {n // d for d in small})


problem(
    'divisor_count', 'Print how many positive divisors n has.',
    lambda s: f'{_divisor_count(ints(s)[0])}\n',
    ['1\n', '12\n', '9999999900\n'],
    'n = int(input())\nc = 0\nd = 1\nwhile d * d <= n:\n  if n % d == 0:\n'
    '    c += 1 if d * d == n else 2\n  d += 1\nprint(c)\n',
    'n = int(input())\nc = 0\nd = 1\nwhile d * d <= n:\n  if n % d == 0:\n'
    '    c += 1\n  d += 1\nprint(c)\n',
    'n = int(input())\nprint(sum(1 for d in range(1, n + 1) if n % d == 0))\n',
    'n = int(input())\nprint([0][n])\n')
problem(
    'gcd', 'Print the greatest common divisor of a and b.',
    lambda s: f'{math.gcd(*ints(s))}\n',
    ['12 18\n', '7 13\n', '1000000000000000000 1\n'],
    'import math\na, b = map(int, input().split())\nprint(math.gcd(a, b))\n',
    'a, b = map(int, input().split())\nprint(min(a, b))\n',
    'a, b = map(int, input().split())\nwhile a != b:\n'
    '  if a > b:\n    a -= b\n  else:\n    b -= a\nprint(a)\n',
    'a, b = map(int, input().split())\nprint(a % 0)\n')
problem(
    'palindrome', 'Print YES if the string is a palindrome, else NO.',
    lambda s: 'YES\n' if s.strip() == s.strip()[::-1] else 'NO\n',
    ['abba\n', 'abc\n', 'racecar\n'],
    's = input().strip()\nprint("YES" if s == s[::-1] else "NO")\n',
    's = input().strip()\nprint("NO" if s == s[::-1] else "YES")\n',
    's = input().strip()\nwhile True:\n  ok = s == s[::-1]\nprint(ok)\n',
    's = input().strip()\nprint(s[len(s) + 5])\n')
problem(
    'reverse_words', 'Print the words of the line in reverse order.',
    lambda s: ' '.join(s.split()[::-1]) + '\n',
    ['hello world\n', 'a b c\n', 'one\n'],
    'print(" ".join(input().split()[::-1]))\n',
    'print(" ".join(input().split()))\n',
    'w = input().split()\nimport time\nwhile True:\n  time.sleep(0.01)\n',
    'w = input().split()\nprint(w[5])\n')
problem(
    'count_vowels', 'Print how many of the letters are vowels (aeiou).',
    lambda s: f'{sum(c in "aeiou" for c in s.strip())}\n',
    ['hello\n', 'rhythm\n', 'aeiouaeiou\n'],
    'print(sum(c in "aeiou" for c in input().strip()))\n',
    'print(sum(c not in "aeiou" for c in input().strip()))\n',
    's = input().strip()\nn = 0\nfor _ in range(10**9):\n'
    '  n = sum(c in "aeiou" for c in s)\nprint(n)\n',
    'print(sum(c in "aeiou" for c in input().strip()) / 0)\n')
problem(
    'sort_numbers', 'The first line has n, the second n integers: print them '
    'in increasing order.',
    lambda s: ' '.join(map(str, sorted(ints(s)[1:]))) + '\n',
    ['3\n3 1 2\n', '1\n5\n', '5\n-1 -5 3 3 0\n'],
    'input()\nprint(*sorted(map(int, input().split())))\n',
    'input()\nprint(*sorted(map(int, input().split()), reverse=True))\n',
    'import itertools\ninput()\na = list(map(int, input().split()))\n'
    'while True:\n  for p in itertools.permutations(a * 3):\n    pass\n',
    'n = int(input())\na = list(map(int, input().split()))\nprint(a[n])\n')
problem(
    'circle_area', 'Print the area of a circle of radius r (absolute or '
    'relative error 1e-6 allowed).',
    lambda s: f'{math.pi * float(s) ** 2:.12f}\n', ['1\n', '2.5\n', '10\n'],
    'import math\nr = float(input())\nprint("%.9f" % (math.pi * r * r))\n',
    'import math\nr = float(input())\nprint("%.9f" % (2 * math.pi * r))\n',
    'r = float(input())\nn = 0\nwhile True:\n  n += 1\n',
    'import math\nr = float(input())\nprint(math.sqrt(-r))\n')
problem(
    'average', 'The first line has n, the second n integers: print their '
    'mean (error 1e-6 allowed).',
    lambda s: f'{sum(ints(s)[1:]) / ints(s)[0]:.10f}\n',
    ['2\n1 2\n', '3\n1 1 2\n', '4\n0 0 0 7\n'],
    'n = int(input())\nprint("%.8f" % (sum(map(int, input().split())) / n))\n',
    'n = int(input())\nprint(sum(map(int, input().split())) // n)\n',
    'n = int(input())\na = list(map(int, input().split()))\nwhile True:\n'
    '  m = sum(a) / n\n',
    'n = int(input())\nprint(sum(map(int, input().split())) / (n - n))\n')
problem(
    'multiply_cases', 'The first line has t; each of the next t lines has a '
    'and b: print a * b on its own line.',
    lambda s: ''.join(f'{a * b}\n' for a, b in zip(ints(s)[1::2],
                                                   ints(s)[2::2])),
    ['2\n2 3\n4 5\n', '1\n0 9\n', '3\n-1 1\n7 7\n100000 100000\n'],
    't = int(input())\nfor _ in range(t):\n  a, b = map(int, input().split())\n'
    '  print(a * b)\n',
    't = int(input())\nfor _ in range(t):\n  a, b = map(int, input().split())\n'
    '  print(a + b)\n',
    't = int(input())\nfor _ in range(t):\n  a, b = map(int, input().split())\n'
    '  p = 0\n  for _ in range(abs(b) * 10**4):\n    p += a\n  print(a * b)\n',
    't = int(input())\nfor _ in range(t + 1):\n'
    '  a, b = map(int, input().split())\n  print(a * b)\n')
problem(
    'distinct_chars', 'Print how many distinct characters the string has.',
    lambda s: f'{len(set(s.strip()))}\n', ['aab\n', 'abc\n', 'zzzz\n'],
    'print(len(set(input().strip())))\n',
    'print(len(input().strip()))\n',
    's = input().strip()\nwhile len(set(s)) > 0:\n  pass\n',
    'print(len(set(input().strip())) + None)\n')
problem(
    'diagonal_sum', 'The first line has n; then n lines of n integers: print '
    'the sum of the main diagonal.',
    lambda s: (lambda v: f'{sum(v[1 + i * v[0] + i] for i in range(v[0]))}\n'
               )(ints(s)),
    ['2\n1 2\n3 4\n', '1\n7\n', '3\n1 0 0\n0 2 0\n0 0 3\n'],
    'n = int(input())\nm = [list(map(int, input().split())) for _ in range(n)]'
    '\nprint(sum(m[i][i] for i in range(n)))\n',
    'n = int(input())\nm = [list(map(int, input().split())) for _ in range(n)]'
    '\nprint(sum(m[i][n - 1 - i] for i in range(n)))\n',
    'n = int(input())\nm = [list(map(int, input().split())) for _ in range(n)]'
    '\nwhile True:\n  s = sum(m[i][i] for i in range(n))\n',
    'n = int(input())\nm = [list(map(int, input().split())) for _ in range(n)]'
    '\nprint(sum(m[i][i + 1] for i in range(n)))\n')
problem(
    'binary', 'Print n in binary, without leading zeros.',
    lambda s: f'{ints(s)[0]:b}\n', ['5\n', '1\n', '1024\n'],
    'print(bin(int(input()))[2:])\n',
    'print(bin(int(input()))[2:][::-1])\n',
    'n = int(input())\nwhile n >= 0:\n  n = n // 2 * 2\nprint(n)\n',
    'print(bin(float(input()))[2:])\n')
problem(
    'is_prime', 'Print YES if n is prime, else NO.',
    lambda s: ('YES\n' if ints(s)[0] > 1 and all(
        ints(s)[0] % d for d in range(2, math.isqrt(ints(s)[0]) + 1))
               else 'NO\n'),
    ['2\n', '15\n', '9999999967\n'],
    'n = int(input())\np = n > 1\nd = 2\nwhile d * d <= n:\n'
    '  if n % d == 0:\n    p = False\n    break\n  d += 1\n'
    'print("YES" if p else "NO")\n',
    'n = int(input())\nprint("YES" if n % 2 == 1 else "NO")\n',
    'n = int(input())\np = n > 1\nfor d in range(2, n):\n  if n % d == 0:\n'
    '    p = False\nprint("YES" if p else "NO")\n',
    'import math\nn = int(input())\nprint(math.factorial(-n))\n')
problem(
    'prefix_sums', 'The first line has n, the second n integers: print the '
    'n prefix sums.',
    lambda s: ' '.join(str(sum(ints(s)[1:i + 2])) for i in range(ints(s)[0]))
    + '\n',
    ['3\n1 2 3\n', '1\n-4\n', '4\n5 5 5 5\n'],
    'import itertools\ninput()\n'
    'print(*itertools.accumulate(map(int, input().split())))\n',
    'input()\nprint(*map(int, input().split()))\n',
    'input()\na = list(map(int, input().split()))\nwhile True:\n'
    '  p = [sum(a[:i + 1]) for i in range(len(a))]\n',
    'n = int(input())\na = list(map(int, input().split()))\n'
    'print(*[sum(a[:i]) / i for i in range(n)])\n')
problem(
    'triangle', 'Print YES if sides a, b, c form a non-degenerate triangle, '
    'else NO.',
    lambda s: (lambda a, b, c: 'YES\n' if a + b > c and a + c > b and
               b + c > a else 'NO\n')(*ints(s)),
    ['3 4 5\n', '1 2 3\n', '2 2 3\n'],
    'a, b, c = sorted(map(int, input().split()))\n'
    'print("YES" if a + b > c else "NO")\n',
    'a, b, c = sorted(map(int, input().split()))\n'
    'print("YES" if a + b >= c else "NO")\n',
    'a, b, c = sorted(map(int, input().split()))\nk = 0\n'
    'while k < 10**12:\n  k += 1\nprint("YES" if a + b > c else "NO")\n',
    'a, b = map(int, input().split())\nprint("YES")\n')
problem(
    'count_words', 'Print how many words the line has (words are separated '
    'by one or more spaces).',
    lambda s: f'{len(s.split())}\n',
    ['hello world\n', '  lots   of   space  \n', 'x\n'],
    'print(len(input().split()))\n',
    'print(input().count(" ") + 1)\n',
    'w = input().split()\nc = 0\nwhile True:\n  c = len(w)\n',
    'import sys\nsys.exit(len(input().split()))\n')
problem(
    'second_largest', 'The first line has n, the second n integers with at '
    'least two distinct values: print the second largest distinct value.',
    lambda s: f'{sorted(set(ints(s)[1:]))[-2]}\n',
    ['3\n1 2 3\n', '4\n5 5 4 4\n', '5\n-1 -2 -3 -4 -5\n'],
    'input()\nprint(sorted(set(map(int, input().split())))[-2])\n',
    'input()\nprint(sorted(map(int, input().split()))[-2])\n',
    'input()\na = list(map(int, input().split()))\nwhile True:\n'
    '  b = sorted(set(a))\n',
    'input()\nprint(sorted(set(map(int, input().split())))[-20])\n')
problem(
    'power_mod', 'Print a to the power b modulo m.',
    lambda s: f'{pow(*ints(s))}\n',
    ['2 10 1000\n', '3 0 7\n', '2 1000000000000000000 1000000007\n'],
    'a, b, m = map(int, input().split())\nprint(pow(a, b, m))\n',
    'a, b, m = map(int, input().split())\nprint(pow(a, b - 1, m))\n',
    'a, b, m = map(int, input().split())\nr = 1 % m\nfor _ in range(b):\n'
    '  r = r * a % m\nprint(r)\n',
    'a, b, m = map(int, input().split())\nprint(pow(a, b, m - m))\n')


def main():
  with OUT.open('w', encoding='utf-8') as f:
    for name, spec in PROBLEMS.items():
      inputs = spec['inputs']
      outputs = [spec['solve'](text) for text in inputs]
      record = {
          'name': name,
          'description': spec['description'],
          'public_tests': {'input': inputs[:1], 'output': outputs[:1]},
          'private_tests': {'input': inputs[1:2], 'output': outputs[1:2]},
          'generated_tests': {'input': inputs[2:], 'output': outputs[2:]},
          'source': 0,
          'difficulty': 1,
          'time_limit': {'seconds': 1, 'nanos': 0},
          'memory_limit_bytes': 256 << 20,
          'solutions': {'language': [PYTHON3],
                        'solution': [spec['programs']['passed']]},
          'test_programs': spec['programs'],
      }
      f.write(json.dumps(record) + '\n')
  print(f'{len(PROBLEMS)} problems -> {OUT}')


if __name__ == '__main__':
  main()
