"""Verifiers: GSM8K and MATH-style answers, and sandboxed code execution.

Math: `verify_gsm8k(completion, reference)` and
`verify_math(completion, reference, checker=SympyChecker())` return a
`MathVerdict` (`correct`, `extracted`). Code: `CodeVerifier(limits,
num_workers).verify_many(tasks)` returns `CodeVerdict`s (`status`, `reason`,
`passed`). No verifier raises on any completion, and the math verifiers
run in time linear in the completion.

GSM8K graders by name: `get_grader('default' | 'paper_strict')` (see
`graders`). A whole stage in worker processes with a hard per-item time
limit: `verify_in_workers(verify_fn, items, timeout_s=..., num_workers=...)`
or a `WorkerPool` (see `parallel`). Command line:
`python -m tpt_jax.verify --task={gsm8k,math,code} --input=... --output=...`.
"""

from __future__ import annotations

import ml_collections

from tpt_jax.verify.code_exec import CodeTask
from tpt_jax.verify.code_exec import CodeVerdict
from tpt_jax.verify.code_exec import CodeVerifier
from tpt_jax.verify.code_exec import extract_code
from tpt_jax.verify.code_exec import run_sandboxed
from tpt_jax.verify.code_exec import SandboxLimits
from tpt_jax.verify.code_exec import STATUS_ERROR
from tpt_jax.verify.code_exec import STATUS_FAILED
from tpt_jax.verify.code_exec import STATUS_PASSED
from tpt_jax.verify.code_exec import STATUS_TIMEOUT
from tpt_jax.verify.code_exec import STATUSES
from tpt_jax.verify.code_exec import task_for_problem
from tpt_jax.verify.graders import get_grader
from tpt_jax.verify.graders import GRADER_NAMES
from tpt_jax.verify.graders import grade_paper_strict
from tpt_jax.verify.math_answers import extract_answer
from tpt_jax.verify.math_answers import MathVerdict
from tpt_jax.verify.math_answers import parse_number
from tpt_jax.verify.math_answers import verify_gsm8k
from tpt_jax.verify.math_latex import answers_equivalent
from tpt_jax.verify.math_latex import normalize_latex
from tpt_jax.verify.math_latex import SympyChecker
from tpt_jax.verify.math_latex import verify_math
from tpt_jax.verify.parallel import ItemVerdict
from tpt_jax.verify.parallel import verify_in_workers
from tpt_jax.verify.parallel import WorkerPool

__all__ = [
    'CodeTask', 'CodeVerdict', 'CodeVerifier', 'extract_code',
    'run_sandboxed', 'SandboxLimits', 'STATUS_ERROR', 'STATUS_FAILED',
    'STATUS_PASSED', 'STATUS_TIMEOUT', 'STATUSES', 'task_for_problem',
    'extract_answer', 'MathVerdict', 'parse_number', 'verify_gsm8k',
    'answers_equivalent', 'normalize_latex', 'SympyChecker', 'verify_math',
    'sandbox_limits', 'default_config', 'get_grader', 'GRADER_NAMES',
    'grade_paper_strict', 'ItemVerdict', 'verify_in_workers', 'WorkerPool',
]


def default_config() -> ml_collections.ConfigDict:
  """`config.verify`: how each task's verifier judges a completion.

  The same settings judge training traces (Think) and test completions
  (Evaluate), so a round's data and its score agree.
  """
  config = ml_collections.ConfigDict()
  # The grader whose verdicts decide pruning and the plain metric names
  # (a task's `grader_names`; GSM8K: 'default' or 'paper_strict').
  config.grader = 'default'
  # Tasks with a picklable `verifier` (GSM8K) verify in worker processes
  # with this hard limit per completion (0: in this process, no limit), so
  # one pathological completion never stalls a stage.
  config.timeout_s = 10.0
  config.num_workers = 0  # Worker processes; 0: one per core (at most 8).
  config.math = ml_collections.ConfigDict()
  # GSM8K: without an answer marker, take the completion's last number.
  config.math.last_number_fallback = True
  # MATH-style: time limit of one sympy equivalence check.
  config.math.sympy_timeout_s = 2.0

  config.demo = ml_collections.ConfigDict()
  # The demo task: a right answer also needs its worked lines to derive it
  # (see tasks.demo.worked_lines_hold); applies to pruning and evaluation.
  config.demo.check_worked_lines = False

  config.code = ml_collections.ConfigDict()
  config.code.timeout_s = 10.0  # Wall clock per program.
  config.code.cpu_time_s = 10  # CPU seconds per process.
  config.code.memory_mb = 1024  # Address space per process.
  config.code.max_output_bytes = 1 << 20  # stdout/stderr/any file written.
  config.code.max_processes = 32  # Processes + threads per sandbox.
  config.code.workdir_mb = 64  # Size of its working directory (root only).
  config.code.num_workers = 0  # Sandboxes run at once; 0 = one per core.
  return config


def sandbox_limits(code_config: ml_collections.ConfigDict) -> SandboxLimits:
  """`SandboxLimits` from `config.verify.code` (see default_config)."""
  return SandboxLimits(
      timeout_s=float(code_config.timeout_s),
      cpu_time_s=int(code_config.cpu_time_s),
      memory_mb=int(code_config.memory_mb),
      max_output_bytes=int(code_config.max_output_bytes),
      max_processes=int(code_config.max_processes),
      workdir_mb=int(code_config.workdir_mb),
  )
