"""TPT (`experiments.tpt`): outputs of every round, resume after SIGKILL, config checks.

The runs are subprocesses of `python -m tpt_jax.main` (as a user runs it) on
a tiny config; the killed runs use the loop's fault-injection points, which
SIGKILL the process. They share a persistent compilation cache so that the
reruns do not recompile.
"""

import hashlib
import json
import os
import pathlib
import shutil
import stat

import pytest

from tpt_jax import config as config_lib
from tpt_jax.experiments import tpt
from tpt_jax import records
from tpt_jax import train as train_lib

_REPO = pathlib.Path(__file__).resolve().parents[1]

_TINY_CONFIG = '''
from tpt_jax import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.model.variant = 'gemma2_tiny'
  c.model.param_dtype = 'float32'
  c.model.compute_dtype = 'float32'
  c.mesh.shape = (1, 2, 1)
  c.task.num_train_problems = 12
  c.task.num_test_problems = 6
  c.sampling.num_samples_per_problem = 2
  c.sampling.max_new_tokens = 16
  c.sampling.batch_size = 8
  c.sampling.temperature = 1.0
  c.sampling.show_progress = False
  c.loop.num_rounds = 2
  c.loop.problems_per_shard = 4
  c.loop.warmup.num_examples = 16
  c.eval.num_samples = 2
  c.eval.ks = (1, 2)
  c.prune.strategies = 'none'
  c.train.batch_size = 4
  c.train.max_seq_len = 128
  c.train.num_steps = 3
  c.train.warmup_steps = 1
  c.train.learning_rate = 1e-3
  c.train.log_every = 1
  c.train.checkpoint_every = 1
  c.train.progress_bar = False
  return c
'''


@pytest.fixture(scope='module')
def config_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('configs') / 'tiny_loop.py'
  path.write_text(_TINY_CONFIG)
  return path


def _outputs(workdir):
  """What must not depend on crashes: summary, datasets, traces, evals."""
  workdir = pathlib.Path(workdir)
  summary = json.loads((workdir / 'summary.json').read_text())
  datasets = {
      r: records.read_round(workdir / f'round_{r}' / 'dataset')
      for r in (1, 2)}
  shards = {str(p.relative_to(workdir)): json.loads(p.read_text())
            for p in sorted(workdir.glob('round_*/*/shard_*.json'))}
  shards.update({str(p.relative_to(workdir)): json.loads(p.read_text())
                 for p in sorted(workdir.glob('round_*/eval/*/shard_*.json'))})
  return summary, datasets, shards


@pytest.fixture(scope='module')
def uninterrupted(config_file, run_main, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  umask = os.umask(0o022)  # (The run inherits it: see test_file_modes...)
  try:
    result = run_main(config_file, workdir)
  finally:
    os.umask(umask)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


def test_a_run_writes_every_rounds_outputs_and_a_valid_summary(uninterrupted):
  workdir, result = uninterrupted
  for round_index in (0, 1, 2):
    eval_report = json.loads(
        (workdir / f'round_{round_index}' / 'eval.json').read_text())
    assert eval_report['round'] == round_index
    for name in ('pass@1', 'pass@2', 'maj@2'):
      assert 0.0 <= eval_report['metrics'][name] <= 1.0
  assert (workdir / 'round_0' / 'warmup' / 'final_params').is_dir()
  for round_index in (1, 2):
    round_dir = workdir / f'round_{round_index}'
    assert records.is_round_dataset(round_dir / 'dataset')
    # Pruning is 'none': every trace is kept.
    assert len(records.read_round(round_dir / 'dataset')) == 12 * 2
    assert (round_dir / 'train' / 'final_params').is_dir()
    assert (round_dir / 'train' / 'checkpoints').is_dir()
  summary = json.loads((workdir / 'summary.json').read_text())
  assert [r['round'] for r in summary['rounds']] == [0, 1, 2]
  for entry in summary['rounds']:
    assert 0.0 <= entry['metrics']['pass@1'] <= 1.0
  assert (workdir / 'summary.png').stat().st_size > 1000
  assert 'round' in result.stdout and 'pass@1' in result.stdout


def test_killed_at_every_stage_then_rerun_gives_identical_outputs(
    uninterrupted, config_file, run_main, tmp_path):
  reference_dir, _ = uninterrupted
  workdir = tmp_path / 'killed'
  crash_points = ['think:1:1', 'records:1', 'train:1:2', 'eval:1:0',
                  'think:2:0', 'train:2:1']
  for point in crash_points:
    result = run_main(config_file, workdir, crash_at=point)
    assert result.returncode == -9, (point, result.stderr[-3000:])
    assert f'killing the process at {point}' in result.stdout
  result = run_main(config_file, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert _outputs(workdir) == _outputs(reference_dir)
  # What the killed writes left (JSON temporaries, a dataset's staging
  # directory) is gone.
  assert [str(p) for p in workdir.rglob('.*') if '.tmp' in p.name] == []



def test_sampling_on_its_own_mesh_gives_the_same_run(uninterrupted,
                                                     config_file, run_main,
                                                     tmp_path):
  # Think and Evaluate on `mesh.sampling_shape` (data=2: params replicated,
  # slots split) while training keeps fsdp=2: every trace, verdict, dataset
  # and metric is the run's own; log-probs agree to float rounding (the
  # params' dot products are summed in another order when not split).
  reference_dir, _ = uninterrupted
  workdir = tmp_path / 'sampling_mesh'
  result = run_main(config_file, workdir,
                    extra=['--config.mesh.sampling_shape=(2,1,1)'])
  assert result.returncode == 0, result.stderr[-3000:]
  summary, datasets, shards = _outputs(workdir)
  reference_summary, reference_datasets, reference_shards = _outputs(
      reference_dir)
  assert datasets == reference_datasets
  assert [r['metrics'] for r in summary['rounds']] == [
      r['metrics'] for r in reference_summary['rounds']]
  assert shards.keys() == reference_shards.keys()
  for name, shard in shards.items():
    for record, reference in zip(shard['records'],
                                 reference_shards[name]['records'],
                                 strict=True):
      assert record.pop('logprob_sum') == pytest.approx(
          reference.pop('logprob_sum'), abs=1e-4), name
      assert record == reference, name


def test_a_changed_config_of_a_started_workdir_is_refused(
    uninterrupted, config_file, run_main):
  workdir, _ = uninterrupted
  before = (workdir / 'summary.json').read_text()
  result = run_main(config_file, workdir,
                    extra=['--config.sampling.temperature=0.5'])
  assert result.returncode == 2
  assert 'config.sampling.temperature: 1.0 in the workdir, 0.5 now' in (
      result.stderr)
  assert (workdir / 'summary.json').read_text() == before


@pytest.mark.parametrize('field, value, message', [
    ('loop.policy', 'sideways', 'config.loop.policy'),
    ('loop.num_rounds', -1, 'config.loop.num_rounds'),
    ('eval.ks', (1, 8), 'config.eval.ks'),
])
def test_bad_loop_config_is_named(field, value, message):
  config = config_lib.base_config()
  config.eval.num_samples = 4
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


@pytest.mark.parametrize('task_name', ['gsm8k', 'mbpp'])
def test_real_tasks_run_through_the_loop(task_name, tmp_path):
  """GSM8K and MBPP (shared data, sandboxed code verifier) through one round
  of a tiny model: plumbing, not learning."""
  from tpt_jax import tasks  # pylint: disable=g-import-not-at-top
  from tpt_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.task.name = task_name
  problems = tasks.get_task(task_name).load_problems('train', config.task)
  tokenizer_path = tmp_path / 'tokenizer.model'
  tokenizer_lib.train_sentencepiece(
      [p.question + '\n' + (p.solution or '') for p in problems[:300]],
      tokenizer_path, vocab_size=512)
  config.tokenizer.path = str(tokenizer_path)
  config.model.variant = 'gemma2_tiny'
  config.model.param_dtype = config.model.compute_dtype = 'float32'
  config.sampling.num_samples_per_problem = 2
  config.sampling.max_new_tokens = 8
  config.sampling.batch_size = 16
  config.sampling.show_progress = False
  config.loop.num_rounds = 1
  config.loop.max_train_problems = 4
  config.loop.max_test_problems = 4
  config.prune.strategies = 'none'
  config.train.batch_size = 8
  config.train.max_seq_len = 512
  config.train.num_steps = 1
  config.train.progress_bar = False
  config_lib.validate(config)
  summary = tpt.run(config, workdir=tmp_path / 'run')
  assert [entry['round'] for entry in summary['rounds']] == [0, 1]
  kept = records.read_round(tmp_path / 'run' / 'round_1' / 'dataset')
  assert len(kept) == 4 * 2
  train_ids = {p.problem_id for p in problems[:4]}
  assert {r['problem_id'] for r in kept} == train_ids
  assert all(r['prompt'].startswith('Question: ') for r in kept)


def test_graders_side_by_side_and_a_test_subset(tmp_path):
  """GSM8K with sampled evaluation by two graders on 3 chosen test problems:
  eval.json has every metric per grader, with the standard error."""
  from tpt_jax import tasks  # pylint: disable=g-import-not-at-top
  from tpt_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.task.name = 'gsm8k'
  problems = tasks.get_task('gsm8k').load_problems('train', config.task)
  tokenizer_path = tmp_path / 'tokenizer.model'
  tokenizer_lib.train_sentencepiece(
      [p.question + '\n' + (p.solution or '') for p in problems[:300]],
      tokenizer_path, vocab_size=512)
  indices = tmp_path / 'indices.json'
  indices.write_text('[5, 1, 3]')
  config.tokenizer.path = str(tokenizer_path)
  config.task.test_indices_path = str(indices)
  config.model.variant = 'gemma2_tiny'
  config.model.param_dtype = config.model.compute_dtype = 'float32'
  config.sampling.num_samples_per_problem = 1
  config.sampling.max_new_tokens = 8
  config.sampling.batch_size = 8
  config.sampling.show_progress = False
  config.loop.num_rounds = 0
  config.eval.num_samples = 2
  config.eval.ks = (1, 2)
  config.eval.graders = ('default', 'paper_strict')
  config.train.progress_bar = False
  config_lib.validate(config)
  tpt.run(config, workdir=tmp_path / 'run')
  metrics = json.loads(
      (tmp_path / 'run' / 'round_0' / 'eval.json').read_text())['metrics']
  assert metrics['num_problems'] == 3
  for grader in ('default', 'paper_strict'):
    for name in ('pass@1', 'pass@1_sampled', 'pass@1_sampled_se', 'pass@2'):
      assert 0.0 <= metrics[f'{name}/{grader}'] <= 1.0, (name, grader)
  greedy = json.loads((tmp_path / 'run' / 'round_0' / 'eval' / 'greedy' /
                       'shard_00000.json').read_text())['records']
  assert [r['problem_id'] for r in greedy] == [
      'gsm8k/test/5', 'gsm8k/test/1', 'gsm8k/test/3']


def test_damaged_weights_are_found_and_retrained(config_file, run_main,
                                                 uninterrupted, tmp_path):
  """Zeroed bytes in a round's final params (same size) are an error that
  names the file; the round trains again from its checkpoints and the run
  ends as an uninterrupted one."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'damaged'
  reference, _ = uninterrupted
  shutil.copytree(reference, workdir)
  (workdir / 'round_2' / 'eval.json').unlink()
  (workdir / 'summary.json').unlink()
  params_dir = workdir / 'round_1' / 'train' / 'final_params'
  victim = max((p for p in params_dir.rglob('*') if p.is_file()),
               key=lambda p: p.stat().st_size)
  data = bytearray(victim.read_bytes())
  data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
  victim.write_bytes(bytes(data))
  result = run_main(config_file, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Damaged params (checksum mismatch): {victim}' in result.stdout
  assert (json.loads((workdir / 'summary.json').read_text()) ==
          json.loads((reference / 'summary.json').read_text()))


def test_a_truncated_checkpoint_falls_back_to_an_earlier_one(
    config_file, run_main, uninterrupted, tmp_path):
  """A checkpoint orbax cannot restore, and that has no digest to check
  (a run killed between its save and its digest), falls back; a damaged one
  with a digest is refused before restoring (tests/test_train.py)."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'truncated'
  reference, _ = uninterrupted
  shutil.copytree(reference, workdir)
  for name in ('round_2/eval.json', 'summary.json', 'round_2/train/done.json'):
    (workdir / name).unlink()
  shutil.rmtree(workdir / 'round_2' / 'train' / 'final_params')
  checkpoints_dir = workdir / 'round_2' / 'train' / 'checkpoints'
  latest = max(int(p.name) for p in checkpoints_dir.iterdir()
               if p.name.isdigit())
  for path in (checkpoints_dir / str(latest)).rglob('*'):
    if path.is_file() and path.stat().st_size > 64:
      path.write_bytes(path.read_bytes()[:32])
  (workdir / 'round_2' / 'train' / train_lib.CHECKPOINT_DIGEST_DIR /
   f'{latest}.json').unlink()
  result = run_main(config_file, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'cannot be restored' in result.stdout
  assert (json.loads((workdir / 'summary.json').read_text()) ==
          json.loads((reference / 'summary.json').read_text()))


def test_a_run_that_failed_at_start_does_not_lock_its_workdir(
    config_file, run_main, tmp_path):
  workdir = tmp_path / 'failed_start'
  missing = tmp_path / 'missing.json'
  result = run_main(config_file, workdir,
                    extra=[f'--config.task.test_indices_path={missing}'])
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f"Invalid config: config.task.test_indices_path='{missing}' does not "
      'exist.')
  assert 'Traceback' not in result.stderr
  result = run_main(config_file, workdir,
                    extra=['--config.loop.num_rounds=0'])
  assert result.returncode == 0, result.stderr[-3000:]


def test_heldout_examples_are_set_aside_and_their_loss_reported(tmp_path):
  """The paper's held-out split: a cap of 10 training examples and 5 held
  out from the 24 surviving traces; the loss of the held-out ones after the
  round's training is in done.json, eval.json and the summary."""
  config = config_lib.base_config()
  config.model.variant = 'gemma2_tiny'
  config.model.param_dtype = config.model.compute_dtype = 'float32'
  config.task.num_train_problems = 12
  config.task.num_test_problems = 4
  config.sampling.num_samples_per_problem = 2
  config.sampling.max_new_tokens = 8
  config.sampling.batch_size = 8
  config.sampling.show_progress = False
  config.loop.num_rounds = 1
  config.prune.strategies = 'none'
  config.loop.max_train_examples_per_round = 10
  config.prune.num_heldout_examples = 5
  config.eval.num_samples = 0
  config.train.batch_size = 8
  config.train.max_seq_len = 256
  config.train.num_steps = 1
  config.train.progress_bar = False
  config_lib.validate(config)
  summary = tpt.run(config, workdir=tmp_path / 'run')
  round_dir = tmp_path / 'run' / 'round_1'
  prune_report = json.loads((round_dir / 'prune.json').read_text())
  assert (prune_report['num_traces'], prune_report['num_kept'],
          prune_report['num_heldout'], prune_report['removed_by_cap']) == (
              24, 10, 5, 9)
  dataset = round_dir / 'dataset'
  assert records.split_names(dataset) == ['heldout', 'train']
  train_rows = records.read_round(dataset)
  heldout_rows = records.read_round(dataset, split=records.HELDOUT_SPLIT)
  assert (len(train_rows), len(heldout_rows)) == (10, 5)
  train_keys = {(r['problem_id'], r['sample_index']) for r in train_rows}
  heldout_keys = {(r['problem_id'], r['sample_index']) for r in heldout_rows}
  assert len(heldout_keys) == 5 and not train_keys & heldout_keys
  done = json.loads((round_dir / 'train' / 'done.json').read_text())
  assert done['heldout_loss'] > 0
  eval_report = json.loads((round_dir / 'eval.json').read_text())
  assert eval_report['metrics']['heldout_loss'] == done['heldout_loss']
  assert summary['rounds'][1]['metrics']['heldout_loss'] == (
      done['heldout_loss'])
  assert summary['rounds'][1]['data']['num_heldout'] == 5
  assert 'heldout_loss' not in summary['rounds'][0]['metrics']
  assert 'heldout_loss' in tpt.format_table(summary)


def test_file_modes_follow_the_umask(uninterrupted):
  """Run under umask 022, every file is 0644 and every directory 0755 (JSON
  written through mkstemp was 0600 whatever the umask)."""
  workdir, _ = uninterrupted
  modes = {str(p.relative_to(workdir)): stat.S_IMODE(p.stat().st_mode)
           for p in workdir.rglob('*')}
  assert {'config.json', 'summary.json', 'timings.json', 'round_1/eval.json',
          'round_1/think/shard_00000.json'} <= set(modes)
  wrong = {name: oct(mode) for name, mode in modes.items()
           if mode != (0o755 if (workdir / name).is_dir() else 0o644)}
  assert not wrong


def _state(workdir):
  """Every path under `workdir` (and itself): mode, mtime, content digest."""
  state = {}
  for path in [workdir, *sorted(workdir.rglob('*'))]:
    info = path.lstat()
    state[str(path.relative_to(workdir))] = (
        info.st_mode, info.st_mtime_ns,
        hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file()
        else None)
  return state


def _set_writable(workdir, writable):
  for path in [workdir, *workdir.rglob('*')]:
    mode = stat.S_IMODE(path.lstat().st_mode)
    os.chmod(path, mode | 0o200 if writable else mode & ~0o222)


def test_a_finished_workdir_is_resumed_without_writing(
    config_file, run_main, uninterrupted, tmp_path):
  """A finished workdir on a read-only filesystem resumes to print its
  results, also with fewer rounds asked for, and nothing in it changes.

  As root, chmod does not stop a write; the unchanged modes, mtimes and
  contents of every path (directories included, so a temporary file written
  and removed shows too) are the check then.
  """
  reference, _ = uninterrupted
  workdir = tmp_path / 'finished'
  shutil.copytree(reference, workdir)
  _set_writable(workdir, False)
  try:
    before = _state(workdir)
    result = run_main(config_file, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Round 2: pass@1' in result.stdout
    assert f'Summary: {workdir / "summary.json"}' in result.stdout
    assert _state(workdir) == before
    # Fewer rounds than were run: the summary keeps every round.
    result = run_main(config_file, workdir,
                      extra=['--config.loop.num_rounds=0'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Round 0: pass@1' in result.stdout
    assert _state(workdir) == before
  finally:
    _set_writable(workdir, True)
  assert [r['round'] for r in json.loads(
      (workdir / 'summary.json').read_text())['rounds']] == [0, 1, 2]


def test_a_rerun_adds_its_timings_to_the_earlier_ones(
    config_file, run_main, uninterrupted, tmp_path):
  """A rerun that evaluates round 2 again keeps the times of the stages the
  first invocation ran (it once wrote only its own `total`)."""
  reference, _ = uninterrupted
  workdir = tmp_path / 'rerun'
  shutil.copytree(reference, workdir)
  (workdir / 'round_2' / 'eval.json').unlink()
  (workdir / 'summary.json').unlink()
  earlier = json.loads((reference / 'timings.json').read_text())
  result = run_main(config_file, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  timings = json.loads((workdir / 'timings.json').read_text())
  assert set(timings) == set(earlier)
  for name in ('round_0/warmup', 'round_0/eval', 'round_1/think',
               'round_1/train', 'round_1/eval'):
    assert timings[name] == earlier[name], name
  assert timings['total'] > earlier['total']
  assert (json.loads((workdir / 'summary.json').read_text()) ==
          json.loads((reference / 'summary.json').read_text()))
