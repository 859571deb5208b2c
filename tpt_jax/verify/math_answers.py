"""GSM8K-style answers: extract a completion's final number, compare exactly.

The verdict is binary: the completion's final answer, parsed as an exact
rational number, equals the reference or it does not. Answers are found, in
this order of preference, after `#### `, inside `\\boxed{...}`, after
`The answer is`, after `Answer:`; failing those, the last number in the text
(the fallback the config can switch off). The text after a marker must hold
exactly one number, optionally with currency, percent, unit words and trailing
punctuation; anything else (`5 or 6`) counts as no answer rather than a guess.

Normalization: thousands separators (`1,000`), currency (`$`, `\\$`, `€`,
`£`), percent (`%`, `\\%`), unit words (`18 dollars`), trailing punctuation,
signs (`-5`, `-$5`, `$-5`), decimals (`18.0 == 18`) and simple fractions
(`3/4 == 0.75`, `\\frac{3}{4}`). No function here raises on any string.
"""

from __future__ import annotations

import dataclasses
import fractions
import re

# Methods by which an answer was found, most explicit first.
METHOD_HASHES = '####'
METHOD_BOXED = 'boxed'
METHOD_ANSWER_IS = 'answer is'
METHOD_ANSWER_COLON = 'answer:'
METHOD_LAST_NUMBER = 'last number'
METHOD_NONE = 'none'


@dataclasses.dataclass(frozen=True)
class MathVerdict:
  """The result of checking one math completion.

  Attributes:
    correct: the extracted answer equals the reference exactly.
    extracted: the completion's answer in canonical form ('1000', '0.75',
      '1/3'), or None when no answer was found.
    method: how the answer was found (one of the METHOD_* names).
    reference: the reference in canonical form, None if it is not a number.
    reason: why the verdict is negative, '' when correct.
  """
  correct: bool
  extracted: str | None
  method: str = METHOD_NONE
  reference: str | None = None
  reason: str = ''


@dataclasses.dataclass(frozen=True)
class Extraction:
  """An answer found in a completion: its raw text and how it was found."""
  text: str
  method: str


_MINUS_SIGNS = str.maketrans({'\u2212': '-', '\u2013': '-', '\u2014': '-',
                              '\u00a0': ' ', '\u2009': ' ', '\u202f': ' '})
_CALCULATOR_ANNOTATION = re.compile(r'<<[^<>\n]*>>')
_UNSIGNED = r'(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+'
_CURRENCY = r'(?:\\\$|\$|€|£|¥|USD|usd|Rs\.?)'
# One number (sign, currency, fraction, percent) and then nothing numeric.
_ANSWER_SPAN = re.compile(
    rf'(?P<sign1>[-+]?)\s*{_CURRENCY}?\s*(?P<sign2>[-+]?)\s*'
    rf'(?P<num>{_UNSIGNED})(?:\s*/\s*(?P<den>{_UNSIGNED}))?'
    r'\s*(?:\\?%|\\text\{\s*\\?%\s*\})?(?P<rest>[^\d]*)', re.DOTALL)
# What may follow the number: unit words, punctuation, closing brackets.
_ALLOWED_REST = re.compile(r"[\sA-Za-z.,;:!?'’\"()\[\]*_/\\{}$%-]*")
_LATEX_FRAC = re.compile(
    r'\\[dt]?frac\s*\{\s*([^{}]*)\s*\}\s*\{\s*([^{}]*)\s*\}')
_LATEX_TEXT = re.compile(r'\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}')
_LATEX_NOISE = re.compile(r'\\[,;!: ]|\\(?:left|right|displaystyle)\b')
_LEADING_NOISE = re.compile(
    r'^[\s:*_=~`>]+|^(?:\\\(|\\\[|\$\$|\$(?=\s*[-+]?\s*\d))')
_SENTENCE_END = re.compile(r'[.!?;](?:\s|$)|\n')
_HASHES = re.compile(r'####')
_ANSWER_IS = re.compile(r'\banswer\s+is\b\s*:?', re.IGNORECASE)
_ANSWER_COLON = re.compile(r'\banswer\s*:', re.IGNORECASE)
_ANY_NUMBER = re.compile(
    rf'(?<![\w.])(?P<sign>-)?\$?(?P<num>{_UNSIGNED})'
    rf'(?:\s*/\s*(?P<den>{_UNSIGNED}))?(?![\w])')


def _clean(text: str) -> str:
  text = text.translate(_MINUS_SIGNS)
  text = _LATEX_NOISE.sub('', text)
  text = _LATEX_FRAC.sub(r'\1/\2', text)
  text = _LATEX_TEXT.sub(r' \1 ', text)
  return text


def parse_number(text: str) -> fractions.Fraction | None:
  """The single number `text` states (with units etc.), or None.

  `text` is an answer span such as '$1,000.', '-5 dollars', '75%', '3/4'.
  A span with more than one number, or none, gives None.
  """
  try:
    return _parse_number(text)
  except (ValueError, ZeroDivisionError, OverflowError, TypeError):
    return None


def _to_fraction(number: str) -> fractions.Fraction:
  return fractions.Fraction(number.replace(',', ''))


def _parse_number(text: str) -> fractions.Fraction | None:
  text = _clean(text).strip()
  text = text.replace('**', '').strip()
  while True:  # Strip leading noise such as ': ', '= ', '\(' and a lone '$'.
    stripped = _LEADING_NOISE.sub('', text, count=1).strip()
    if stripped == text:
      break
    text = stripped
  match = _ANSWER_SPAN.fullmatch(text)
  if match is None or not _ALLOWED_REST.fullmatch(match['rest']):
    return None
  if match['sign1'] and match['sign2']:
    return None
  value = _to_fraction(match['num'])
  if match['den'] is not None:
    value /= _to_fraction(match['den'])
  if '-' in (match['sign1'], match['sign2']):
    value = -value
  return value


def canonical(value: fractions.Fraction) -> str:
  """'18', '0.75', '-2.5' or '1/3': a short exact string for `value`."""
  if value.denominator == 1:
    return str(value.numerator)
  denominator = value.denominator
  digits = 0
  while denominator % 10 == 0 or denominator % 2 == 0 or denominator % 5 == 0:
    if denominator % 10 == 0:
      denominator //= 10
    elif denominator % 2 == 0:
      denominator //= 2
    else:
      denominator //= 5
    digits += 1
  if denominator != 1:
    return f'{value.numerator}/{value.denominator}'
  scaled = abs(value) * 10**digits
  text = str(scaled.numerator).rjust(digits + 1, '0')
  text = (text[:-digits] + '.' + text[-digits:]).rstrip('0').rstrip('.')
  return ('-' if value < 0 else '') + text


def last_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces nested."""
  start = max(text.rfind('\\boxed'), text.rfind('\\fbox'))
  if start < 0:
    return None
  position = start + (6 if text.startswith('\\boxed', start) else 5)
  while position < len(text) and text[position] == ' ':
    position += 1
  if position >= len(text):
    return None
  if text[position] != '{':
    # `\boxed 5`: the argument runs to the next space or `$`.
    match = re.match(r'[^\s$]+', text[position:])
    return match.group(0) if match else None
  depth = 0
  for index in range(position, len(text)):
    if text[index] == '{':
      depth += 1
    elif text[index] == '}':
      depth -= 1
      if depth == 0:
        return text[position + 1:index]
  return None  # Unbalanced braces: no answer rather than a guess.


def _after_last(pattern: re.Pattern[str], text: str) -> str | None:
  last = None
  for last in pattern.finditer(text):
    pass
  if last is None:
    return None
  return text[last.end():]


def _up_to_sentence_end(span: str) -> str:
  end = _SENTENCE_END.search(span.lstrip())
  span = span.lstrip()
  return span[:end.start()] if end else span


def extract_answer(completion: str, *,
                   last_number_fallback: bool = True) -> Extraction | None:
  """The final answer a completion states, or None.

  Tries `#### N`, `\\boxed{N}`, `The answer is N`, `Answer: N` (each at its
  last occurrence) and keeps the first that holds exactly one number. If
  none holds one, the most explicit is returned (and will not parse as a
  number). Only a completion with no such marker at all falls back, if
  `last_number_fallback`, to the last number in the text.
  """
  if not isinstance(completion, str):
    return None
  text = _CALCULATOR_ANNOTATION.sub('', completion.translate(_MINUS_SIGNS))
  candidates = []
  span = _after_last(_HASHES, text)
  if span is not None:
    candidates.append(Extraction(span.split('\n', 1)[0].strip(),
                                 METHOD_HASHES))
  boxed = last_boxed(text)
  if boxed is not None:
    candidates.append(Extraction(boxed.strip(), METHOD_BOXED))
  for pattern, method in ((_ANSWER_IS, METHOD_ANSWER_IS),
                          (_ANSWER_COLON, METHOD_ANSWER_COLON)):
    span = _after_last(pattern, text)
    if span is not None:
      if '\\boxed' in span[:20]:
        continue  # Already handled as boxed.
      candidates.append(Extraction(_up_to_sentence_end(span).strip(), method))
  for candidate in candidates:
    if parse_number(candidate.text) is not None:
      return candidate
  if candidates:
    # An explicit answer that is not one number ('5 or 6') is no answer: the
    # last number of a hedged answer would be a guess.
    return candidates[0]
  if last_number_fallback:
    last = None
    for last in _ANY_NUMBER.finditer(_clean(text)):
      pass
    if last is not None:
      return Extraction(last.group(0).strip(), METHOD_LAST_NUMBER)
  return None


def reference_value(reference: str) -> fractions.Fraction | None:
  """The reference answer: a bare value or a GSM8K solution ending `#### N`."""
  if not isinstance(reference, str):
    return None
  marker = reference.rfind('####')
  if marker >= 0:
    reference = reference[marker + 4:].split('\n', 1)[0]
  return parse_number(reference)


def verify_gsm8k(completion: str, reference: str, *,
                 last_number_fallback: bool = True) -> MathVerdict:
  """Whether `completion`'s final answer equals `reference` exactly.

  Never raises: any failure is a negative verdict with a reason.
  """
  try:
    return _verify(completion, reference, last_number_fallback)
  except Exception as e:  # pylint: disable=broad-except
    return MathVerdict(False, None, METHOD_NONE, None,
                       f'internal error: {type(e).__name__}: {e}'[:500])


def _verify(completion: str, reference: str,
            last_number_fallback: bool) -> MathVerdict:
  expected = reference_value(reference)
  expected_text = None if expected is None else canonical(expected)
  if not isinstance(completion, str):
    return MathVerdict(False, None, METHOD_NONE, expected_text,
                       f'completion is a {type(completion).__name__}, '
                       'not a string')
  extraction = extract_answer(completion,
                              last_number_fallback=last_number_fallback)
  if extraction is None:
    return MathVerdict(False, None, METHOD_NONE, expected_text,
                       'no final answer found')
  value = parse_number(extraction.text)
  if value is None:
    return MathVerdict(False, None, extraction.method, expected_text,
                       f'answer {extraction.text[:80]!r} is not a number')
  extracted = canonical(value)
  if expected is None:
    return MathVerdict(False, extracted, extraction.method, None,
                       f'reference {str(reference)[-80:]!r} is not a number')
  if value != expected:
    return MathVerdict(False, extracted, extraction.method, expected_text,
                       f'{extracted} != {expected_text}')
  return MathVerdict(True, extracted, extraction.method, expected_text)
