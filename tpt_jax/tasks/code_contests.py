r"""CodeContests: competitive programming, judged on stdin/stdout.

The task of the TPT paper's code track. A problem is a statement and
input/output tests; a completion is a complete Python 3 program, taken from
its LAST fenced code block (a model often shows a draft first), and judged
by `verify.stdio_judge` in the code verifier's sandbox: run once per test
with the input on stdin, its stdout compared token by token (a real-number
token within `float_tolerance`), within the problem's time limit times
`time_limit_factor`. The extracted answer of a verdict is its status
(`stdio_judge.STDIO_STATUSES`: passed, wrong_answer, runtime_error, timeout,
memory, output_limit, syntax_error, judge_error). There is no answer to vote
on: `majority_vote` is False; pass@k is the unbiased estimator, as for MBPP.

Data (`config.task.code_contests.path`, a directory; unset: `code_contests`
in the shared data directory). The split 'train' reads the files whose names
start with 'train' (e.g. Hugging Face's `train-00000-of-00039.parquet`), the
split 'test' those starting with `test_split` ('test' or 'valid'), in name
order, from the directory or its `data/` subdirectory. Files are JSONL
(`.jsonl`, `.jsonl.gz`) or parquet (`.parquet`, needs pyarrow). A record is
either

  * `deepmind/code_contests`: `name`, `description`, `public_tests` /
    `private_tests` / `generated_tests` as {"input": [...], "output":
    [...]}, `time_limit` {"seconds", "nanos"} (or null), `solutions`
    {"language": [...], "solution": [...]} (language 3 is Python 3), ...; or
  * APPS / TACO: `question`, `input_output` (JSON text or object: {"inputs":
    [...], "outputs": [...]}; an input given as a list of lines is joined
    with newlines), `solutions` (JSON text: a list of programs), optional
    `problem_id` / `name`. Call-based problems (with `fn_name`) are not
    stdin/stdout problems and are left out, with a warning.

Which tests verify: a train problem carries the sets in `train_test_sets`
(it verifies the traces trained on), a test problem those in
`eval_test_sets` (it scores the evaluation); both default to public,
private and generated. A problem without a test in its sets is left out,
with a warning. `Problem.answer` is the first Python 3 reference solution
(or ''), `Problem.solution` the same in a ```python fence, as a completion
should look (few-shot exemplars, warm-up).

Config (`config.task.code_contests`, see `default_config`); sandbox limits
and parallel workers come from `config.verify.code`, as for MBPP.

Length: two input layouts (CodeContests, APPS) in three file formats, each
with its own field checks, plus the task itself; the readers are only used
here.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping, Sequence
import dataclasses
import json
import logging
import math
import pathlib
import re
from typing import Any

import ml_collections

from tpt_jax import config_fields
from tpt_jax import sources
from tpt_jax import tasks
from tpt_jax import verify as verify_lib
from tpt_jax.verify import stdio_judge

NAME = 'code_contests'
TEST_SETS = ('public', 'private', 'generated')
TEST_SPLITS = ('test', 'valid')
# The extracted answers of this task's verdicts (one per status), e.g. to
# count them per round.
VERDICTS = stdio_judge.STDIO_STATUSES
# CodeContests' language id of Python 3 in `solutions.language`.
PYTHON3 = 3
INSTRUCTION = (
    'Write a complete Python 3 program that reads the input from standard '
    'input and prints the answer to standard output. Put the whole program '
    'in one ```python code block.')
_SUFFIXES = ('.jsonl', '.jsonl.gz', '.parquet')
_FENCE = re.compile(r'```[ \t]*(?:python3?|py|Python3?)?[ \t]*\n(.*?)```',
                    re.DOTALL)
_OPEN_FENCE = re.compile(r'```[ \t]*(?:python3?|py|Python3?)?[ \t]*\n')


def default_config() -> ml_collections.ConfigDict:
  """Defaults of `config.task.code_contests`."""
  config = ml_collections.ConfigDict()
  # Directory of the data (see the module docstring); None: `code_contests`
  # in the shared data directory.
  config.path = config_fields.optional(str)
  # Which files are the 'test' split: 'test' or 'valid' (CodeContests has
  # both; APPS exports only 'test').
  config.test_split = 'test'
  # Comma-separated test sets (public, private, generated) that verify the
  # traces of train problems, and that score the test problems.
  config.train_test_sets = 'public,private,generated'
  config.eval_test_sets = 'public,private,generated'
  # At most this many tests per problem, in set order (0: all).
  config.max_tests_per_problem = 0
  # Multiplies each problem's time limit (CodeContests' limits are set for
  # C++; Python needs more).
  config.time_limit_factor = 1.0
  # Time limit of problems that state none (APPS), before the factor.
  config.default_time_limit_s = 2.0
  # Tolerance of real-number outputs (relative or absolute); 0: exact.
  config.float_tolerance = 1e-6
  return config


def task_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.task.code_contests` (validated), defaults when it is absent."""
  section = config.get(NAME)
  section = default_config() if section is None else section
  validate_config(section)
  return section


def test_sets(value: str, field: str) -> tuple[str, ...]:
  """The test sets a comma-separated `value` names; `field` for errors."""
  names = tuple(name.strip() for name in str(value).split(',') if
                name.strip())
  unknown = [name for name in names if name not in TEST_SETS]
  if not names or unknown or len(set(names)) != len(names):
    raise config_fields.ConfigError(
        f'config.task.{NAME}.{field}={value!r} must list some of '
        f'{", ".join(TEST_SETS)}, each once.')
  return names


def validate_config(section: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad `config.task.code_contests`
  field."""
  prefix = f'config.task.{NAME}'
  if section.test_split not in TEST_SPLITS:
    raise config_fields.ConfigError(
        f'{prefix}.test_split={section.test_split!r} is not one of '
        f'{", ".join(TEST_SPLITS)}.')
  test_sets(section.train_test_sets, 'train_test_sets')
  test_sets(section.eval_test_sets, 'eval_test_sets')
  if section.max_tests_per_problem < 0:
    raise config_fields.ConfigError(
        f'{prefix}.max_tests_per_problem={section.max_tests_per_problem} '
        'must not be negative.')
  for field in ('time_limit_factor', 'default_time_limit_s'):
    if not 0 < section[field] < math.inf:
      raise config_fields.ConfigError(
          f'{prefix}.{field}={section[field]!r} must be > 0.')
  if not 0 <= section.float_tolerance < 1:
    raise config_fields.ConfigError(
        f'{prefix}.float_tolerance={section.float_tolerance!r} must be in '
        '[0, 1).')


def _data_dir(section: ml_collections.ConfigDict) -> pathlib.Path:
  if section.path is None:
    path = tasks.SHARED_DATA_DIR / NAME
    if not path.is_dir():
      raise config_fields.ConfigError(
          f'config.task.{NAME}.path is not set and the default {path} does '
          f'not exist; set config.task.{NAME}.path to the data directory.')
    return path
  path = pathlib.Path(section.path).expanduser()
  if not path.is_dir():
    raise config_fields.ConfigError(
        f'config.task.{NAME}.path={section.path!r} is not a directory.')
  return path


def split_files(directory: pathlib.Path, prefix: str) -> list[pathlib.Path]:
  """The data files of the split whose names start with `prefix`."""
  found = []
  for folder in (directory, directory / 'data'):
    if folder.is_dir():
      found += [path for path in folder.iterdir()
                if path.is_file() and path.name.startswith(prefix) and
                path.name[len(prefix):len(prefix) + 1] in ('-', '.', '_') and
                path.name.endswith(_SUFFIXES)]
  if not found:
    raise config_fields.ConfigError(
        f'config.task.{NAME}.path={str(directory)!r} has no {prefix!r} split: '
        f'no file named {prefix}[-._]*{{{",".join(_SUFFIXES)}}} in it or its '
        'data/ subdirectory.')
  return sorted(found, key=lambda path: path.name)


def _parquet_records(path: pathlib.Path) -> Iterator[tuple[str, Any]]:
  try:
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f'Reading {path} needs pyarrow: pip install pyarrow (or export the '
        'data as JSONL).') from e
  index = 0
  for batch in pq.ParquetFile(path).iter_batches(batch_size=16):
    for row in batch.to_pylist():
      yield f'{path}: row {index}', row
      index += 1


def _jsonl_records(path: pathlib.Path, on_error: str
                   ) -> list[tuple[str, Any]]:
  records = []

  def keep(record: dict[str, Any], index: int) -> None:
    records.append((f'{path}: record {index}', record))

  # Lines that are not JSON objects are raised or skipped here (naming the
  # file and line), as for every task's JSONL.
  # pylint: disable-next=protected-access
  sources._read_jsonl(path, keep, on_error=on_error)
  return records


def read_records(path: pathlib.Path, on_error: str = 'raise'
                 ) -> Iterator[tuple[str, Any]]:
  """(location, record) of each record of a JSONL or parquet file."""
  if path.name.endswith('.parquet'):
    yield from _parquet_records(path)
  else:
    yield from _jsonl_records(path, on_error)


def _as_text(value: Any, what: str) -> str:
  if isinstance(value, list) and all(isinstance(v, str) for v in value):
    return '\n'.join(value) + ('\n' if value else '')  # APPS: lines.
  if not isinstance(value, str):
    raise ValueError(f'{what} must be a string, got {type(value).__name__}')
  return value


def _test_set(record: Mapping[str, Any], name: str) -> list[
    stdio_judge.StdioTest]:
  field = f'{name}_tests'
  value = record.get(field)
  if value is None:
    return []
  if not isinstance(value, Mapping):
    raise ValueError(f'{field} must be {{"input": [...], "output": [...]}}')
  inputs, outputs = value.get('input') or [], value.get('output') or []
  if len(inputs) != len(outputs):
    raise ValueError(f'{field} has {len(inputs)} inputs but {len(outputs)} '
                     'outputs')
  return [stdio_judge.StdioTest(_as_text(i, f'{field}.input[{k}]'),
                                _as_text(o, f'{field}.output[{k}]'))
          for k, (i, o) in enumerate(zip(inputs, outputs))]


def _time_limit_s(value: Any) -> float | None:
  if value is None:
    return None
  if isinstance(value, Mapping):
    seconds = (value.get('seconds') or 0) + (value.get('nanos') or 0) / 1e9
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    seconds = float(value)
  else:
    raise ValueError(f'time_limit must be {{"seconds", "nanos"}} or a number, '
                     f'got {value!r}')
  return seconds if seconds > 0 else None


def _maybe_json(value: Any, field: str) -> Any:
  if isinstance(value, str):
    try:
      return json.loads(value) if value.strip() else None
    except ValueError as e:
      raise ValueError(f'{field} is not valid JSON ({e})') from e
  return value


@dataclasses.dataclass(frozen=True)
class _Parsed:
  name: str
  statement: str
  tests_by_set: dict[str, list[stdio_judge.StdioTest]]
  time_limit_s: float | None
  reference: str


def _parse_code_contests(record: Mapping[str, Any]) -> _Parsed:
  statement = record['description']
  if not isinstance(statement, str):
    raise ValueError('description must be a string')
  reference = ''
  solutions = record.get('solutions') or {}
  if isinstance(solutions, Mapping):
    for language, program in zip(solutions.get('language') or [],
                                 solutions.get('solution') or []):
      if language == PYTHON3 and isinstance(program, str):
        reference = program
        break
  return _Parsed(str(record.get('name') or ''), statement,
                 {name: _test_set(record, name) for name in TEST_SETS},
                 _time_limit_s(record.get('time_limit')), reference)


def _parse_apps(record: Mapping[str, Any]) -> _Parsed | None:
  """None for a call-based problem (not stdin/stdout)."""
  statement = record['question']
  if not isinstance(statement, str):
    raise ValueError('question must be a string')
  io = _maybe_json(record['input_output'], 'input_output')
  if not isinstance(io, Mapping):
    raise ValueError('input_output must be {"inputs": [...], "outputs": '
                     '[...]}')
  if io.get('fn_name'):
    return None
  inputs, outputs = io.get('inputs') or [], io.get('outputs') or []
  if len(inputs) != len(outputs):
    raise ValueError(f'input_output has {len(inputs)} inputs but '
                     f'{len(outputs)} outputs')
  tests = [stdio_judge.StdioTest(_as_text(i, f'input_output.inputs[{k}]'),
                                 _as_text(o, f'input_output.outputs[{k}]'))
           for k, (i, o) in enumerate(zip(inputs, outputs))]
  programs = _maybe_json(record.get('solutions'), 'solutions') or []
  reference = next((p for p in programs if isinstance(p, str)), '')
  name = record.get('name') or record.get('problem_id')
  # APPS tests are not split into sets: they count as public.
  return _Parsed(str(name if name is not None else ''), statement,
                 {'public': tests, 'private': [], 'generated': []},
                 _time_limit_s(record.get('time_limit')), reference)


def parse_record(record: Any) -> _Parsed | None:
  """A CodeContests or APPS record; None for one that is not stdin/stdout.

  Raises:
    ValueError / KeyError / TypeError: naming the bad field.
  """
  if not isinstance(record, Mapping):
    raise ValueError(f'expected an object, got {type(record).__name__}')
  if 'description' in record:
    return _parse_code_contests(record)
  if 'question' in record and 'input_output' in record:
    return _parse_apps(record)
  raise ValueError('neither a CodeContests record (description, *_tests) nor '
                   'an APPS one (question, input_output)')


def fenced(program: str) -> str:
  """`program` as a completion shows it: in one ```python block."""
  return f'```python\n{program.rstrip()}\n```'


def extract_program(completion: str) -> str:
  """The program of a completion: its last fenced block with code; else the
  text after an opening fence never closed (a cut-off sample); else all."""
  if not isinstance(completion, str):
    return ''
  blocks = [m.group(1) for m in _FENCE.finditer(completion)
            if m.group(1).strip()]
  if blocks:
    return blocks[-1]
  opening = list(_OPEN_FENCE.finditer(completion))
  if opening:
    return completion[opening[-1].end():]
  return completion


def load_split(split: str, config: ml_collections.ConfigDict
               ) -> list[tasks.Problem]:
  """The problems of `split` ('train' or 'test'); `config` is config.task."""
  if split not in tasks.SPLITS:
    raise ValueError(
        f'split={split!r} is not one of {", ".join(tasks.SPLITS)}.')
  section = task_config(config)
  prefix = 'train' if split == 'train' else section.test_split
  sets = test_sets(section.train_test_sets if split == 'train' else
                   section.eval_test_sets,
                   'train_test_sets' if split == 'train' else
                   'eval_test_sets')
  on_error = tasks.on_malformed_line(config)
  problems = []
  skipped = collections.Counter()
  seen = collections.Counter()
  for path in split_files(_data_dir(section), prefix):
    for location, record in read_records(path, on_error):
      try:
        parsed = parse_record(record)
      except (ValueError, KeyError, TypeError) as e:
        reason = f'missing field {e}' if isinstance(e, KeyError) else str(e)
        if on_error != 'skip':
          raise sources.MalformedInputError(f'{location}: {reason}') from e
        skipped['malformed'] += 1
        logging.warning('Skipped a malformed problem: %s: %s', location,
                        reason)
        continue
      if parsed is None:
        skipped['call-based (fn_name)'] += 1
        continue
      tests = [test for name in sets for test in parsed.tests_by_set[name]]
      if section.max_tests_per_problem:
        tests = tests[:section.max_tests_per_problem]
      if not tests:
        skipped[f'without {"/".join(sets)} tests'] += 1
        continue
      name = parsed.name or f'{prefix}_{len(problems) + sum(skipped.values())}'
      seen[name] += 1
      if seen[name] > 1:
        name = f'{name}#{seen[name]}'
      time_limit_s = parsed.time_limit_s or section.default_time_limit_s
      problems.append(tasks.Problem(
          problem_id=f'{NAME}/{split}/{name}',
          question=parsed.statement.strip(),
          answer=parsed.reference,
          solution=fenced(parsed.reference) if parsed.reference else None,
          stdio_tests=tuple(tests),
          time_limit_s=time_limit_s * section.time_limit_factor,
          float_tolerance=float(section.float_tolerance)))
  if skipped:
    logging.warning('code_contests %s: left out %s.', split, ', '.join(
        f'{count} {why}' for why, count in sorted(skipped.items())))
  return problems


def stdio_task(completion: str, problem: tasks.Problem
               ) -> stdio_judge.StdioTask:
  """The judge's task for `completion` answering `problem`."""
  if not problem.stdio_tests:
    raise ValueError(
        f'problem_id={problem.problem_id!r} has no stdin/stdout tests; '
        'load it with the code_contests task.')
  text = completion if isinstance(completion, str) else ''
  return stdio_judge.StdioTask(
      program=extract_program(tasks.cut_at_next_question(text)),
      tests=problem.stdio_tests, time_limit_s=problem.time_limit_s)


@dataclasses.dataclass(frozen=True)
class CodeContestsTask:
  """The CodeContests task (see the module docstring)."""
  name: str = NAME
  majority_vote: bool = False
  # A verdict per judged trace; prune.json counts them per round.
  verdicts: tuple[str, ...] = VERDICTS

  def load_problems(self, split: str,
                    config: ml_collections.ConfigDict) -> list[tasks.Problem]:
    """The problems of `split` in file order (ids 'code_contests/{split}/
    {name}'); `config` is `config.task`."""
    return list(load_split(split, config))

  def verify(self, completion: str,
             problem: tasks.Problem) -> tuple[bool, str | None]:
    """(whether the program passes every test, the verdict's status)."""
    return self.verify_many([completion], [problem], verify_lib.default_config())[0]

  def verify_many(self, completions: Sequence[str],
                  problems: Sequence[tasks.Problem],
                  verify_config: ml_collections.ConfigDict
                  ) -> list[tuple[bool, str | None]]:
    """`verify` of each pair, in parallel sandboxes set by `verify_config.code`
    (its memory, output, process limits and workers; time limits are the
    problems'). Logs the count of each verdict."""
    judge_tasks = [stdio_task(completion, problem) for completion, problem
                   in zip(completions, problems, strict=True)]
    if not judge_tasks:
      return []
    limits = verify_lib.sandbox_limits(verify_config.code)
    # Problems may differ in tolerance: judge each group with its options.
    groups = collections.defaultdict(list)
    for index, problem in enumerate(problems):
      groups[problem.float_tolerance].append(index)
    verdicts = [None] * len(judge_tasks)
    for tolerance, indices in groups.items():
      options = stdio_judge.JudgeOptions(float_tolerance=tolerance)
      with stdio_judge.StdioJudge(limits, options,
                                  int(verify_config.code.num_workers)) as judge:
        for index, verdict in zip(indices, judge.judge_many(
            [judge_tasks[i] for i in indices])):
          verdicts[index] = verdict
    counts = stdio_judge.count_statuses(verdicts)
    logging.info('code_contests verdicts: %s', ', '.join(
        f'{status} {count}' for status, count in counts.items() if count))
    return [(verdict.passed, verdict.status) for verdict in verdicts]

  def format_prompt(self, problem: tasks.Problem, style: str,
                    exemplars: Sequence[tasks.Problem] = (),
                    instruction: str | None = None) -> str:
    shown = [dataclasses.replace(p, question=f'{p.question}\n\n{INSTRUCTION}')
             for p in (problem, *exemplars)]
    return tasks.render_prompt(
        shown[0], style, shown[1:],
        cot_instruction=instruction or tasks.COT_INSTRUCTION)

  def normalize_answer(self, answer: str) -> str:
    """`answer` unchanged: programs are not voted on (majority_vote=False)."""
    if not isinstance(answer, str):
      raise ValueError(f'answer={answer!r} is not a string.')
    return answer

  def corpus(self, config: ml_collections.ConfigDict) -> list[str]:
    """See the module function `corpus`."""
    return corpus(0, config=config)

  def warmup_examples(self, num_examples: int, seed: int,
                      config: ml_collections.ConfigDict, *, style: str,
                      exemplars: Sequence[tasks.Problem] = ()
                      ) -> list[tuple[str, str]]:
    """See the module function `warmup_examples`."""
    return warmup_examples(num_examples, seed, config=config, style=style,
                           exemplars=exemplars)


TASK = CodeContestsTask()


def warmup_examples(n: int, seed: int, *,
                    config: ml_collections.ConfigDict | None = None,
                    style: str = 'zero_shot',
                    exemplars: Sequence[tasks.Problem] = ()
                    ) -> list[tuple[str, str]]:
  """Up to `n` (prompt, fenced reference program) pairs of train problems.

  For the optional warm-up fine-tune (`config.loop.warmup`): the train
  problems with a Python 3 reference solution, exemplars left out, in a
  seeded order.
  """
  import random  # pylint: disable=g-import-not-at-top
  config = tasks.default_config() if config is None else config
  exemplar_ids = {exemplar.problem_id for exemplar in exemplars}
  problems = [p for p in load_split('train', config)
              if p.solution and p.problem_id not in exemplar_ids]
  random.Random(f'tpt_jax.tasks.{NAME}/warmup/{seed}').shuffle(problems)
  return [(TASK.format_prompt(p, style, exemplars), p.solution)
          for p in problems[:n]]


def corpus(seed: int, *, config: ml_collections.ConfigDict | None = None,
           num_problems: int = 200) -> list[str]:
  """Texts to build a toy model's tokenizer from: the prompt scaffolding and
  up to `num_problems` train statements with their reference programs."""
  del seed  # The train problems in file order.
  config = tasks.default_config() if config is None else config
  texts = [INSTRUCTION, 'Question: Answer:\n```python\n```',
           'import sys input() print() int() str() map split range len']
  for problem in load_split('train', config)[:num_problems]:
    texts.append(problem.question)
    if problem.solution:
      texts.append(problem.solution)
  return texts
