"""Named GSM8K graders, to report a metric under more than one grading protocol.

A grader maps (completion, reference) to a `MathVerdict`. The reference is
the gold answer as the dataset writes it ('1,000'), or a whole GSM8K solution
ending in `#### <gold>`.

- `default`: our verifier, `math_answers.verify_gsm8k`: reads the final
  answer the way a person would (`**#### Answer: $500**`, `#### [25]`, the
  number on the line after `** #### **`, `2:00 pm`, `25%`, ...) and compares
  numbers exactly (`1,000 == 1000`).
- `paper_strict`: the protocol of the TPT authors' released evaluation
  (Costello et al. 2025, `evmath.py`): the regex `####\\s*(-?[\\d.,]+)` on the
  completion, then exact string equality of the captured text with the gold
  answer string. So `1,000 != 1000`, `#### 25.` != `25` (the `.` is
  captured), and `**#### Answer: $500**`, `#### **25**` or a missing `####`
  are misses. The GSM8K task passes it GSM8K's own answer text
  (`Problem.raw_answer`, '1,200'), as the released code does, not our
  canonical answer ('1200').

Comparing the two shows whether a round's gain is reasoning (both rise) or
only the `####` format (paper_strict rises, default does not).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import functools
import re
import types

from tpt_jax.verify import math_answers

MathVerdict = math_answers.MathVerdict
Grader = Callable[[str, str], MathVerdict]

# The released code's pattern (`ANS_RE_GSM8k` in evmath.py).
_PAPER_ANSWER = re.compile(r'####\s*(-?[\d.,]+)')


def paper_gold(reference: str) -> str:
  """The gold answer string: the text after a solution's last `####`
  (GSM8K's own convention, as in the released `solnum` field), else the
  reference itself, whitespace stripped."""
  marker = reference.rfind('####')
  return (reference[marker + 4:] if marker >= 0 else reference).strip()


def grade_paper_strict(completion: str, reference: str) -> MathVerdict:
  """The TPT authors' GSM8K grading, reproduced exactly.

  The answer is group 1 of the FIRST match of `####\\s*(-?[\\d.,]+)`
  (`re.search`, as `extract_answer_gsm8k` in the released `evmath.py`, even
  though its comment speaks of the last `####`), stripped; it is correct iff
  it equals `paper_gold(reference)` as a string. The released generation
  scripts also delete a literal `[Answer]` placeholder from completions
  before saving them; that is a sampling-time edit, not part of grading,
  and is not done here. Never raises.
  """
  if not isinstance(completion, str) or not isinstance(reference, str):
    return MathVerdict(False, None, math_answers.METHOD_NONE, None,
                       'completion and reference must be strings')
  gold = paper_gold(reference)
  match = _PAPER_ANSWER.search(completion)
  if match is None:
    return MathVerdict(False, None, math_answers.METHOD_NONE, gold,
                       "no '####' followed by a number")
  extracted = match.group(1).strip()
  if extracted != gold:
    return MathVerdict(False, extracted, math_answers.METHOD_HASHES, gold,
                       f'{extracted[:80]!r} != {gold[:80]!r}')
  return MathVerdict(True, extracted, math_answers.METHOD_HASHES, gold)


GSM8K_GRADERS: Mapping[str, Grader] = types.MappingProxyType({
    'default': math_answers.verify_gsm8k,
    'paper_strict': grade_paper_strict,
})
GRADER_NAMES = tuple(GSM8K_GRADERS)


def get_grader(name: str, *, last_number_fallback: bool = True) -> Grader:
  """The GSM8K grader called `name` (one of GRADER_NAMES).

  Args:
    name: 'default' or 'paper_strict'.
    last_number_fallback: `default` only: take the last number when the
      completion states no answer (`config.verify.math.last_number_fallback`).

  Returns:
    A picklable function (completion, reference) -> MathVerdict.

  Raises:
    ValueError: naming `name` and the known graders.
  """
  if name not in GSM8K_GRADERS:
    raise ValueError(f'Unknown GSM8K grader name={name!r}; known graders: '
                     f'{", ".join(GRADER_NAMES)}.')
  if name == 'default' and not last_number_fallback:
    return functools.partial(math_answers.verify_gsm8k,
                             last_number_fallback=False)
  return GSM8K_GRADERS[name]
