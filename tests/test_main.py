"""`python -m tpt_jax.main`: config parsing, validation and errors."""

import json
import pathlib
import re
import subprocess
import sys

import pytest

from tpt_jax import models

_REPO = pathlib.Path(__file__).resolve().parents[1]
_CONFIGS = sorted(p.name for p in (_REPO / 'configs').glob('*.py'))


def _main(*args):
  return subprocess.run(
      [sys.executable, '-m', 'tpt_jax.main', *args], cwd=_REPO,
      capture_output=True, text=True, check=False,
      env={'PYTHONPATH': str(_REPO), 'PATH': '/usr/bin:/bin',
           'JAX_PLATFORMS': 'cpu'})


def _message_lines(stderr):
  """stderr without the C++ runtime's start-up log lines (TensorFlow, XLA)."""
  return [line for line in stderr.strip().splitlines()
          if not re.match(r'[IWEF]\d{4} ', line) and not line.startswith(
              'WARNING: All log messages before absl::InitializeLog()')]


def _printed_config(stdout):
  text = stdout.split('Resolved config:\n', 1)[1]
  return json.JSONDecoder().raw_decode(text)[0]


@pytest.mark.parametrize('config_file', _CONFIGS)
def test_every_config_file_parses_and_validates(config_file):
  result = _main(f'--config=configs/{config_file}', '--dry_run')
  assert result.returncode == 0, result.stderr
  printed = _printed_config(result.stdout)
  assert printed['model']['variant'] in models.MODEL_VARIANTS


@pytest.mark.parametrize('config_file', _CONFIGS)
def test_every_config_file_opens_with_a_docstring_with_a_command(config_file):
  text = (_REPO / 'configs' / config_file).read_text()
  assert text.startswith('r"""') or text.startswith('"""')
  docstring = text.split('"""')[1]
  assert 'python -m tpt_jax.main --config=configs/' + config_file in (
      docstring.replace('\\\n', ' ').replace('  ', ' '))


def test_overrides_and_workdir_are_applied():
  result = _main('--config=configs/gemma2_9b.py', '--dry_run',
                 '--config.seed=42', '--config.mesh.shape=(1,-1,2)',
                 '--workdir=/tmp/somewhere')
  assert result.returncode == 0, result.stderr
  printed = _printed_config(result.stdout)
  assert printed['seed'] == 42
  assert printed['model']['variant'] == 'gemma2_9b'
  assert list(printed['mesh']['shape']) == [1, -1, 2]
  assert printed['workdir'] == '/tmp/somewhere'


def test_unknown_field_is_named():
  result = _main('--config=configs/tiny.py', '--config.model.variantt=x')
  assert result.returncode == 2
  assert 'Unknown config field in --config.model.variantt=x' in result.stderr
  assert 'Did you mean "variant"' in result.stderr
  assert 'Traceback' not in result.stderr


def test_wrong_type_is_named():
  result = _main('--config=configs/tiny.py', '--config.seed=abc')
  assert result.returncode == 2
  assert '--config.seed=abc' in result.stderr
  assert 'Traceback' not in result.stderr


def test_bad_value_is_named():
  result = _main('--config=configs/tiny.py', '--config.model.variant=gpt5')
  assert result.returncode == 2
  assert "config.model.variant='gpt5' is not one of" in result.stderr


def test_stage_fields_are_validated():
  result = _main('--config=configs/tiny.py', '--config.task.name=gsm9k')
  assert result.returncode == 2
  assert "config.task.name='gsm9k' is not a known task" in result.stderr
  result = _main('--config=configs/tiny.py',
                 '--config.prune.strategies=correct,dedupe')
  assert result.returncode == 2
  assert "Unknown pruning strategy 'dedupe'" in result.stderr


def test_tiny_config_runs_on_cpu(tmp_path):
  result = _main('--config=configs/tiny.py', f'--workdir={tmp_path}')
  assert result.returncode == 0, result.stderr
  assert 'Model: 0.18M params' in result.stdout
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert [entry['round'] for entry in summary['rounds']] == [0, 1]
  assert 'pass@1' in result.stdout


def test_ci_runs_exactly_the_readme_test_command():
  readme = (_REPO / 'README.md').read_text()
  ci_script = (_REPO / '.ci' / 'run').read_text()
  test_lines = [line for line in ci_script.splitlines()
                if 'pytest' in line and not line.startswith('#')]
  assert len(test_lines) == 1
  assert f'```bash\n{test_lines[0]}\n```' in readme


def test_readme_demo_command_uses_the_demo_config():
  readme = (_REPO / 'README.md').read_text()
  assert ('pip install -q -e . -c constraints.txt && python -m tpt_jax.main '
          '--config=configs/demo.py') in readme


def test_dry_run_with_a_topology_prints_the_plan():
  result = _main('--config=configs/tiny.py', '--dry_run', '--topology=v5e-4')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'train_step' in result.stdout
  result = _main('--config=configs/tiny.py', '--dry_run',
                 '--topology=v9z-1024')
  assert result.returncode == 2
  assert 'v5e-16' in result.stdout + result.stderr


def test_the_headline_errors_are_one_line(tmp_path):
  result = _main('--config=configs/nope.py', '--dry_run')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "Cannot load --config: [Errno 2] No such file or directory: "
      "'configs/nope.py'")
  assert 'Traceback' not in result.stderr
  config_file = tmp_path / 'no_get_config.py'
  config_file.write_text('x = 1\n')
  result = _main(f'--config={config_file}', '--dry_run')
  assert result.returncode == 2
  assert f'Config file {config_file} defines no get_config()' in result.stderr
  assert 'Traceback' not in result.stderr
  assert len(_message_lines(result.stderr)) == 1, result.stderr


def test_a_mesh_that_does_not_fit_the_devices_is_one_line(tmp_path):
  # One CPU device here.
  result = _main('--config=configs/tiny.py', f'--workdir={tmp_path}',
                 '--config.mesh.shape=(2,1,1)')
  assert result.returncode == 2
  assert _message_lines(result.stderr) == [
      'Invalid config: config.mesh.shape=(2, 1, 1) needs 2 devices; there '
      'are 1.']


def _gsm8k_dir(directory, train_lines, test_lines=None):
  """A gsm8k_path directory: train.jsonl and test.jsonl of the given lines
  (test: the first shared test problem)."""
  directory.mkdir()
  if test_lines is None:
    test_lines = (_REPO.parent / 'shared' / 'data' / 'gsm8k' /
                  'test.jsonl').read_text().splitlines()[:1]
  for name, lines in (('train', train_lines), ('test', test_lines)):
    (directory / f'{name}.jsonl').write_text(''.join(
        line + '\n' for line in lines))
  return directory


_GOOD_GSM8K_LINE = json.dumps({'question': 'How many?',
                               'answer': 'One and one.\n#### 2'})


@pytest.mark.parametrize('train_lines, test_lines, message', [
    ([], None, 'train.jsonl: the file holds no records.'),
    ([_GOOD_GSM8K_LINE], [], 'test.jsonl: the file holds no records.'),
    ([_GOOD_GSM8K_LINE, '{"question": "q"'], None,
     'train.jsonl:2: Expecting'),
    ([_GOOD_GSM8K_LINE] * 3 + [json.dumps({'question': 'Who?',
                                          'answer': 'Bob.\n#### Bob'})],
     None, "train.jsonl:4: GSM8K answer '#### Bob' is not a number"),
])
def test_bad_gsm8k_data_is_one_line_naming_file_and_line(
    tmp_path, train_lines, test_lines, message):
  data = _gsm8k_dir(tmp_path / 'gsm8k', train_lines, test_lines)
  result = _main('--config=configs/tiny.py', f'--workdir={tmp_path / "w"}',
                 '--config.task.name=gsm8k',
                 f'--config.task.gsm8k_path={data}')
  assert result.returncode == 2
  lines = _message_lines(result.stderr)
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith(f'Bad input data: {data}/{message}'), lines


@pytest.mark.parametrize('override, message', [
    ('sampling.batch_size=0', 'config.sampling.batch_size=0 must be >= 1.'),
    ('sampling.num_samples_per_problem=0',
     'config.sampling.num_samples_per_problem=0 must be >= 1.'),
    ('sampling.max_new_tokens=-1',
     'config.sampling.max_new_tokens=-1 must be >= 1.'),
    ('sampling.temperature=-1', 'config.sampling.temperature=-1.0 must be '
     '>= 0'),
])
def test_sampling_values_are_refused_by_dry_run(override, message):
  """Once checked only when sampling started, 25 s into a run."""
  result = _main('--config=configs/tiny.py', '--dry_run',
                 f'--config.{override}')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      f'Invalid config: {message}')
  assert 'Traceback' not in result.stderr
  assert 'Resolved config' not in result.stdout
