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
    'sandbox_limits', 'get_grader', 'GRADER_NAMES', 'grade_paper_strict',
    'ItemVerdict', 'verify_in_workers', 'WorkerPool',
]


def sandbox_limits(code_config: ml_collections.ConfigDict) -> SandboxLimits:
  """`SandboxLimits` from `config.prune.code` (see prune.default_config)."""
  return SandboxLimits(
      timeout_s=float(code_config.timeout_s),
      cpu_time_s=int(code_config.cpu_time_s),
      memory_mb=int(code_config.memory_mb),
      max_output_bytes=int(code_config.max_output_bytes),
      max_processes=int(code_config.max_processes),
      workdir_mb=int(code_config.workdir_mb),
  )
