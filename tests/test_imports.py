"""The package's import structure: no circle, every module importable alone,
no long module without a stated reason."""

import ast
import concurrent.futures
import os
import pathlib
import subprocess
import sys

import pytest

_PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'tpt_jax'
# A module longer than this says why at the top of its docstring, in a
# paragraph starting 'Length:'.
_MAX_LINES = 520


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(_PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(_PACKAGE.rglob('*.py'))}


def _imports(path: pathlib.Path, known: set[str]) -> set[str]:
  """The tpt_jax modules `path` imports, at any level of its code."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from pkg import sub` imports the module pkg.sub; `from mod import
      # name` the module mod.
      names = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in known
               else node.module for a in node.names]
    else:
      continue
    found.update(name for name in names if name in known)
  return found


def test_the_import_graph_has_no_cycle():
  modules = _modules()
  # A submodule needs its packages anyway (Python imports them first): an
  # edge to an enclosing package is not a dependency of its own.
  graph = {name: {d for d in _imports(path, set(modules))
                  if d != name and not name.startswith(d + '.')}
           for name, path in modules.items()}
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(name: str) -> None:
    state[name] = 1
    stack.append(name)
    for dependency in sorted(graph[name]):
      if state.get(dependency) == 1:
        cycle = stack[stack.index(dependency):] + [dependency]
        pytest.fail('import circle: ' + ' -> '.join(cycle))
      if dependency not in state:
        visit(dependency)
    stack.pop()
    state[name] = 2

  for name in sorted(graph):
    if name not in state:
      visit(name)


def _import_alone(name: str) -> tuple[str, int, str]:
  result = subprocess.run(
      [sys.executable, '-c', f'import {name}'], capture_output=True,
      text=True, check=False, timeout=300,
      cwd=_PACKAGE.parent,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'})
  return name, result.returncode, result.stderr[-2000:]


def test_every_module_imports_alone_in_a_fresh_interpreter():
  names = [n for n in _modules() if not n.endswith('__main__')]
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    failures = [f'{name}:\n{stderr}' for name, code, stderr
                in pool.map(_import_alone, names) if code]
  assert not failures, '\n'.join(failures)


def test_long_modules_say_why():
  unexplained = []
  for name, path in _modules().items():
    lines = path.read_text().count('\n')
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ''
    if lines > _MAX_LINES and 'Length:' not in docstring:
      unexplained.append(f'{name} ({lines} lines)')
  assert not unexplained, (
      'Modules over about 500 lines must say why (a "Length:" paragraph at '
      'the top of the docstring) or be split: ' + ', '.join(unexplained))
