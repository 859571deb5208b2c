"""GSM8K-style answers: extract a completion's final number, compare exactly.

The verdict is binary: the completion's final answer, parsed as an exact
rational number, equals the reference or it does not. Precision comes before
recall: a wrong answer judged correct poisons the training data, so when the
final answer is unclear the verdict is negative rather than a guess.

Where the answer is found, in this order:
1. The last `####` line that states an answer decides, when there is one. It
   may carry markup, brackets and a label (`**#### Answer: $500**`,
   `#### **[25]**`, `**#### [87] **`, `#### Total: 25`); a `####` line with
   nothing on it (`** #### **`) takes the next non-blank line. A markdown
   heading (`#### Step 2: ...`, `#### 3. Add`) followed by more text is not
   an answer line.
2. Else the last `\\boxed{...}`, `The answer is`, `Answer:` (also with markup
   and the number on the next line: `**4. Answer:**\\n**18**`), the first that
   holds one number.
3. Else, if `last_number_fallback`, the last number before any closing chatter
   ("Let me know if you'd like ...", "I hope this helps"): a number in the
   chatter is never taken.

The text of an answer must hold exactly one number, optionally with currency,
percent, unit words and trailing punctuation; anything else (`5 or 6`) counts
as no answer. Normalization: thousands separators (`1,000`), currency (`$`,
`\\$`, `€`, `£`), percent (`25%`, `\\%`), unit words (`18 dollars`), trailing
punctuation, signs (`-5`, `-$5`, `$-5`), decimals (`18.0 == 18`), simple
fractions (`3/4 == 0.75`, `\\frac{3}{4}`), a number said twice (`#### 3 3`)
and a whole hour (`2:00 pm` is 2).

No function here raises on any string, and each runs in time linear in its
input: the patterns use possessive quantifiers and atomic groups, so none
backtracks over a run of spaces, digits or braces (a hostile completion such
as `\\frac{` and 20,000 spaces takes milliseconds).
"""

from __future__ import annotations

import collections
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
# `####` lines looked at, from the last: bounds the work on hostile input.
_MAX_HASH_LINES = 16
# A number said at most this many times in a row is read as one (`#### 3 3`).
_MAX_REPEATS = 3


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
_CALCULATOR_ANNOTATION = re.compile(r'<<[^<>\n]*+>>')
# Atomic: once a number is read, no shorter reading of it is tried.
_UNSIGNED = r'(?>(?:\d{1,3}(?:,\d{3})++|\d++)(?:\.\d++)?+|\.\d++)'
_CURRENCY = r'(?:\\\$|\$|€|£|¥|USD|usd|Rs\.?)'
# One number (sign, currency, fraction, percent) and then nothing numeric.
_ANSWER_SPAN = re.compile(
    rf'(?P<sign1>[-+]?+)\s*+{_CURRENCY}?+\s*+(?P<sign2>[-+]?+)\s*+'
    rf'(?P<num>{_UNSIGNED})(?:\s*+/\s*+(?P<den>{_UNSIGNED}))?+'
    r'\s*+(?:\\?%|\\text\{\s*+\\?%\s*+\})?+(?P<rest>[^\d]*+)', re.DOTALL)
# What may follow the number: unit words, punctuation, closing brackets.
_ALLOWED_REST = re.compile(r"[\sA-Za-z.,;:!?'’\"()\[\]*_/\\{}$%-]*+")
_LATEX_FRAC = re.compile(r'\\[dt]?frac\s*+\{([^{}]*+)\}\s*+\{([^{}]*+)\}')
_LATEX_TEXT = re.compile(r'\\(?:text|textbf|mathrm|mbox)\s*+\{([^{}]*+)\}')
_LATEX_NOISE = re.compile(r'\\[,;!: ]|\\(?:left|right|displaystyle)\b')
# `2:00 pm` is 2 (GSM8K states times as whole hours).
_WHOLE_HOUR = re.compile(r'(?<![\d:.,])(\d{1,2}):00(?![\d:])')
# Markup, labels and brackets before a number: ': ', '= ', '**', '[', '\(',
# a lone '$' (a '$' before a number is currency, read by _ANSWER_SPAN).
_LEADING_NOISE = re.compile(
    r'(?:[\s:*_=~`>\[(]++|\\\(|\\\[|\$\$|\$(?=\s*+[-+]?+\s*+\d))*+')
_BARE_ARGUMENT = re.compile(r'[^\s$]++')  # `\\boxed 5`
_SENTENCE_END = re.compile(r'[.!?;](?:\s|$)|\n')
_HASHES = re.compile(r'#{4,}+')
_ANSWER_IS = re.compile(r'\banswer\s++is\b\s*+:?', re.IGNORECASE)
_ANSWER_COLON = re.compile(r'\banswer\s*+:', re.IGNORECASE)
# A label before the answer on a `####` line: 'Answer:', 'Final Answer',
# 'The answer is', 'Total cost:', 'x ='.
_LABEL = re.compile(
    r'(?:the\s++)?(?:final\s++)?answer(?:\s++is)?+\b\s*+[:=]?+|'
    r'[A-Za-z][A-Za-z ]{0,40}[:=]', re.IGNORECASE)
# Nothing but markup: a `####` line like this takes the next line.
_MARKUP_ONLY = re.compile(r'[\s*_#>`~\[\](){}$:=.\\-]*+')
# A markdown heading after `####`: a word, or a numbered step ('3. Add').
_HEADING = re.compile(r'[^\W\d_]|\d++\.\s++[^\W\d_]')
# Closing chatter: from here on, no number is the answer.
_CHATTER = re.compile(
    r"(?:^|(?<=[.!?)\]\n]))[ \t*_>#-]*+(?:(?:I|I'm|I am|I'd be|Please|And)"
    r"\s++)?+(?:let me know|feel free|hope (?:this|that|it) helps|"
    r"would you like|do you (?:want|need|have any)|"
    r"if you (?:have|need|want|would like|'d like) (?:any|more|another|"
    r"further|help|me|to)|happy to help|anything else|is there anything)",
    re.IGNORECASE | re.MULTILINE)
_TRAILING_MARKUP = frozenset(' \t\r\n*_#>`~-')
# A number anywhere (the last-number fallback). It does not start inside a
# word, a decimal, or a thousands group (which keeps the scan linear).
_ANY_NUMBER = re.compile(
    rf'(?<![\w.])(?:(?<!\d,)|(?!\d{{3}}(?!\d)))(?P<sign>-)?\$?'
    rf'(?P<num>{_UNSIGNED})(?:\s*+/\s*+(?P<den>{_UNSIGNED}))?+(?![\w])')


def _frac_to_slash(match: re.Match[str]) -> str:
  return f'{match[1].strip()}/{match[2].strip()}'


def _clean(text: str) -> str:
  text = text.translate(_MINUS_SIGNS)
  text = _LATEX_NOISE.sub('', text)
  text = _LATEX_FRAC.sub(_frac_to_slash, text)
  text = _LATEX_TEXT.sub(r' \1 ', text)
  text = _WHOLE_HOUR.sub(r'\1', text)
  return text


def parse_number(text: str) -> fractions.Fraction | None:
  """The single number `text` states (with units etc.), or None.

  `text` is an answer span such as '$1,000.', '-5 dollars', '75%', '3/4',
  '2:00 pm', '3 3'. A span with more than one number, or none, gives None.
  """
  try:
    return _parse_number(text)
  except (ValueError, ZeroDivisionError, OverflowError, TypeError):
    return None


def _to_fraction(number: str) -> fractions.Fraction:
  return fractions.Fraction(number.replace(',', ''))


def _strip_leading_noise(text: str) -> str:
  return text[_LEADING_NOISE.match(text).end():]


def _parse_number(text: str) -> fractions.Fraction | None:
  text = _clean(text).replace('**', '').strip()
  value = _parse_single(text)
  if value is None:
    value = _parse_repeated(text)
  return value


def _parse_single(text: str) -> fractions.Fraction | None:
  """The one number of `text` (cleaned), or None."""
  text = _strip_leading_noise(text).strip()
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


def _parse_repeated(text: str) -> fractions.Fraction | None:
  """The number of `3 3` or `$25 25 25`: two or three words that each state
  the same number."""
  words = text.split(maxsplit=_MAX_REPEATS)
  if not 2 <= len(words) <= _MAX_REPEATS:
    return None
  values = set()
  for word in words:
    value = _parse_single(word)
    if value is None:
      return None
    values.add(value)
    if len(values) > 1:
      return None
  return values.pop()


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
    match = _BARE_ARGUMENT.match(text, position)
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


def _after_last(pattern: re.Pattern[str], text: str,
                prefer_before: int) -> str | None:
  """The text after the last match of `pattern`; a match starting before
  `prefer_before` (the closing chatter) wins over one inside the chatter."""
  last = last_before = None
  for last in pattern.finditer(text):
    if last.start() < prefer_before:
      last_before = last
  chosen = last_before or last
  return None if chosen is None else text[chosen.end():]


def _up_to_sentence_end(span: str) -> str:
  """The answer after a marker: markup and line breaks skipped (`Answer:**`
  then the number on the next line), up to the end of its sentence."""
  span = _strip_leading_noise(span)
  end = _SENTENCE_END.search(span)
  return span[:end.start()] if end else span


def _chatter_start(text: str) -> int:
  """Where closing chatter ('Let me know ...') begins, else len(text)."""
  match = _CHATTER.search(text)
  return len(text) if match is None else match.start()


def _answer_line_text(line: str) -> str:
  """A `####` line's answer: markup, chatter and a leading label removed;
  '' when the line holds nothing but markup."""
  line = line.replace('**', '').replace('__', '')
  line = line[:_chatter_start(line)]
  line = _strip_leading_noise(line)
  label = _LABEL.match(line)
  if label is not None:
    line = _strip_leading_noise(line[label.end():])
  line = line.strip()
  return '' if _MARKUP_ONLY.fullmatch(line) else line


def _next_line(text: str, position: int) -> tuple[str, int] | None:
  """The first line after `position` with more than markup, and its end."""
  while position < len(text):
    end = text.find('\n', position + 1)
    end = len(text) if end < 0 else end
    content = _answer_line_text(text[position:end])
    if content:
      return content, end
    position = end
  return None


def _hashes_answer(text: str, chatter_start: int,
                   content_end: int) -> Extraction | None:
  """The answer of the last `####` line that states one, None if none does.

  A `####` in the closing chatter (from `chatter_start` on) is skipped, and
  so is a heading (`#### Step 2: ...`) followed by more text before
  `content_end` (the end of the text before the chatter, trailing markup
  excluded).
  """
  matches = collections.deque(_HASHES.finditer(text), maxlen=_MAX_HASH_LINES)
  for match in reversed(matches):
    if match.start() >= chatter_start:
      continue  # In the closing chatter.
    line_end = text.find('\n', match.end())
    line_end = len(text) if line_end < 0 else line_end
    content = _answer_line_text(text[match.end():line_end])
    if not content:  # `** #### **` and the number on the next line.
      following = _next_line(text, line_end)
      if following is None:
        return Extraction('', METHOD_HASHES)
      content, line_end = following
    if _HEADING.match(content) and line_end < content_end:
      continue
    if '\\boxed' in content or '\\fbox' in content:  # `#### $\\boxed{5}$`
      content = (last_boxed(content) or content).strip()
    return Extraction(content, METHOD_HASHES)
  return None


def _content_end(text: str, chatter_start: int) -> int:
  """The end of the text before closing chatter, trailing markup excluded."""
  end = chatter_start
  while end > 0 and text[end - 1] in _TRAILING_MARKUP:
    end -= 1
  return end


def extract_answer(completion: str, *,
                   last_number_fallback: bool = True) -> Extraction | None:
  """The final answer a completion states, or None.

  The last `####` line that states an answer decides. Else tries
  `\\boxed{N}`, `The answer is N`, `Answer: N` (each at its last occurrence
  before any closing chatter) and keeps the first that holds exactly one
  number; if none holds one, the most explicit is returned (and will not
  parse as a number). Only a completion with no such marker at all falls
  back, if `last_number_fallback`, to the last number before the chatter.
  """
  if not isinstance(completion, str):
    return None
  text = _CALCULATOR_ANNOTATION.sub('', completion.translate(_MINUS_SIGNS))
  chatter_start = _chatter_start(text)
  content_end = _content_end(text, chatter_start)
  hashes = _hashes_answer(text, chatter_start, content_end)
  if hashes is not None:
    return hashes
  candidates = []
  boxed = last_boxed(text)
  if boxed is not None:
    candidates.append(Extraction(boxed.strip(), METHOD_BOXED))
  for pattern, method in ((_ANSWER_IS, METHOD_ANSWER_IS),
                          (_ANSWER_COLON, METHOD_ANSWER_COLON)):
    span = _after_last(pattern, text, content_end)
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
    for last in _ANY_NUMBER.finditer(_clean(text[:content_end])):
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
