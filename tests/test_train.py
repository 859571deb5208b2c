"""The Train stage: loss, masking, accumulation, sharding, resume, LoRA, output.

One f32 `gemma2_tiny` model and one small arithmetic dataset. A module-scoped
reference run (`train.train`, random init, 6 steps on one device) serves the
loss, metrics, resume and final-checkpoint tests; once its first step ran,
the kill-and-resume test's victim process starts beside it. A persistent XLA
cache lets the victim, the resumed run and the step-level tests load the
reference's compiled programs instead of compiling them again. The sharded
(8 simulated devices) path runs in the 1-vs-8 device and LoRA tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
from typing import Any

import jax
from jax.experimental.compilation_cache import (
    compilation_cache as compilation_cache_lib)
import jax.numpy as jnp
from jax.sharding import PartitionSpec
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tpt_jax import config as config_lib
from tpt_jax import input_pipeline
from tpt_jax import models
from tpt_jax import optim
from tpt_jax import sharding as sharding_lib
from tpt_jax import tokenizer as tokenizer_lib
from tpt_jax import train
from tpt_jax import workdir as workdir_lib
from gemma import gm  # pylint: disable=g-bad-import-order
from gemma import peft  # pylint: disable=g-bad-import-order

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 6
KILL_AT_STEP = 4


def _records(n=120):
  return [{'prompt': f'What is {a} plus {b}?',
           'completion': f' {a} plus {b} makes {a + b}. The answer is {a + b}.'}
          for a in range(n // 10) for b in range(10)]


def make_config(tokenizer: tokenizer_lib.Tokenizer, tokenizer_path: str,
                **train_overrides) -> ml_collections.ConfigDict:
  config = config_lib.base_config()
  config.train = train.default_config()
  config.model.param_dtype = config.model.compute_dtype = 'float32'
  config.model.vocab_size = tokenizer.vocab_size
  config.tokenizer.path = tokenizer_path
  config.train.update(dict(
      batch_size=8, max_seq_len=64, num_steps=NUM_STEPS, learning_rate=3e-3,
      warmup_steps=2, weight_decay=0.01, checkpoint_every=2,
      checkpoint_keep=2, log_every=1, progress_bar=False))
  config.train.update(train_overrides)
  return config


# The victim of the kill-and-resume test: trains like the reference run and
# SIGKILLs itself once step KILL_AT_STEP's metrics are out (its checkpoint
# may still be being written).
_VICTIM = textwrap.dedent('''
    import json, os, signal, sys
    import ml_collections
    import jax
    from tpt_jax import sharding, tokenizer as tokenizer_lib, train
    config_path, records_path, workdir, losses_path, kill_at = sys.argv[1:]
    config = ml_collections.ConfigDict(json.load(open(config_path)))
    records = json.load(open(records_path))
    tokenizer = tokenizer_lib.load_tokenizer(config.tokenizer.path)

    def callback(step, metrics):
      with open(losses_path, 'a') as f:
        f.write(json.dumps([step, metrics['loss']]) + '\\n')
      if step == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)

    mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
    train.train(config, [records], tokenizer=tokenizer, workdir=workdir,
                mesh=mesh, step_callback=callback)
''')


@dataclasses.dataclass
class Env:
  tokenizer: tokenizer_lib.Tokenizer
  tokenizer_path: str
  records: list[dict[str, str]]
  tmp: pathlib.Path
  victim: subprocess.Popen
  victim_workdir: pathlib.Path
  victim_losses: pathlib.Path
  reference: train.TrainResult
  reference_workdir: pathlib.Path

  def config(self, **train_overrides) -> ml_collections.ConfigDict:
    return make_config(self.tokenizer, self.tokenizer_path, **train_overrides)


@pytest.fixture(scope='module')
def compilation_cache(tmp_path_factory):
  """A persistent XLA cache for this module and the processes it starts.

  The victim process and the resumed run compile exactly the reference
  run's programs; with the cache they load them instead (minutes of CPU).
  """
  directory = str(tmp_path_factory.mktemp('xla_cache'))
  previous = (jax.config.jax_compilation_cache_dir,
              jax.config.jax_persistent_cache_min_compile_time_secs)
  compilation_cache_lib.set_cache_dir(directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  compilation_cache_lib.reset_cache()
  yield {'JAX_COMPILATION_CACHE_DIR': directory,
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  jax.config.update('jax_compilation_cache_dir', previous[0])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', previous[1])
  compilation_cache_lib.reset_cache()


@pytest.fixture(scope='module')
def env(tmp_path_factory, compilation_cache) -> Env:
  tmp = tmp_path_factory.mktemp('train')
  records = _records()
  tokenizer_path = str(tmp / 'tokenizer.model')
  tokenizer = tokenizer_lib.train_sentencepiece(
      [r['prompt'] + r['completion'] for r in records], tokenizer_path,
      vocab_size=420)
  config = make_config(tokenizer, tokenizer_path)
  (tmp / 'config.json').write_text(config.to_json())
  (tmp / 'records.json').write_text(json.dumps(records))
  victim_workdir, victim_losses = tmp / 'victim', tmp / 'victim_losses.jsonl'
  processes = []

  def start_victim(step, metrics):
    """Once step 1 ran, its programs are cached: start the victim."""
    del step, metrics
    if not processes:
      processes.append(subprocess.Popen(
          [sys.executable, '-c', _VICTIM, str(tmp / 'config.json'),
           str(tmp / 'records.json'), str(victim_workdir), str(victim_losses),
           str(KILL_AT_STEP)],
          env={**os.environ, **compilation_cache,
               'PYTHONPATH': str(REPO_ROOT)},
          cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
          text=True))

  try:
    reference_workdir = tmp / 'reference'
    reference = train.train(config, [records], tokenizer=tokenizer,
                            workdir=reference_workdir, mesh=_one_device(config),
                            step_callback=start_victim)
    yield Env(tokenizer=tokenizer, tokenizer_path=tokenizer_path,
              records=records, tmp=tmp, victim=processes[0],
              victim_workdir=victim_workdir, victim_losses=victim_losses,
              reference=reference, reference_workdir=reference_workdir)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
      process.communicate()


def _one_device(config):
  return sharding_lib.make_mesh(config.mesh, devices=jax.devices()[:1])


def _losses(history):
  return {step: metrics['loss'] for step, metrics in history}


def _random_params(model: models.Model, seed: int = 0) -> models.Params:
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32),
      model.abstract_params())


def test_loss_falls_and_metrics_and_checkpoints_are_written(env):
  history = env.reference.history
  assert [step for step, _ in history] == list(range(1, NUM_STEPS + 1))
  losses = [m['loss'] for _, m in history]
  assert losses[-1] < losses[0] - 0.5, losses
  assert history[-1][1]['accuracy'] > history[0][1]['accuracy']
  for _, metrics in history:
    assert metrics['loss_tokens'] > 0
    assert metrics['tokens'] > metrics['loss_tokens']  # Prompts are masked.
    assert metrics['grad_norm'] > 0
  # Warm-up reaches the peak at step 2, then cosine decay.
  lrs = [m['learning_rate'] for _, m in history]
  assert lrs[0] == pytest.approx(1.5e-3) and lrs[1] == pytest.approx(3e-3)
  assert lrs[2] > lrs[3] > lrs[4] > lrs[5]
  assert 'tokens_per_sec' in history[-1][1]

  from tensorboard.backend.event_processing import (  # pylint: disable=g-import-not-at-top
      event_accumulator)
  events = event_accumulator.EventAccumulator(
      str(env.reference_workdir / train.TENSORBOARD_DIR))
  events.Reload()
  tags = set(events.Tags()['tensors']) | set(events.Tags()['scalars'])
  assert {'loss', 'accuracy', 'learning_rate', 'grad_norm',
          'tokens_per_sec'} <= tags

  # Saved every 2 steps and at the end, keeping the last 2.
  manager = ocp.CheckpointManager(env.reference_workdir / train.CHECKPOINT_DIR)
  assert manager.all_steps() == [4, 6]
  manager.close()


def test_kill_and_resume_equals_uninterrupted_run(env):
  output, _ = env.victim.communicate(timeout=600)
  assert env.victim.returncode == -signal.SIGKILL, output
  victim_losses = dict(json.loads(line) for line in
                       env.victim_losses.read_text().splitlines())
  reference = _losses(env.reference.history)
  assert max(victim_losses) == KILL_AT_STEP
  for step, loss in victim_losses.items():
    assert loss == reference[step], step

  manager = ocp.CheckpointManager(env.victim_workdir / train.CHECKPOINT_DIR)
  saved = manager.latest_step()
  manager.close()
  assert saved in (KILL_AT_STEP - 2, KILL_AT_STEP)
  resumed = train.train(env.config(), [env.records], tokenizer=env.tokenizer,
                        workdir=env.victim_workdir,
                        mesh=_one_device(env.config()))
  resumed_losses = _losses(resumed.history)
  assert sorted(resumed_losses) == list(range(saved + 1, NUM_STEPS + 1))
  for step, loss in resumed_losses.items():
    assert loss == reference[step], step
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(resumed.params),
               jax.device_get(env.reference.params))


def test_a_damaged_checkpoint_is_refused_and_an_earlier_one_resumed(
    env, tmp_path, capsys):
  """Zeroed bytes in the newest checkpoint (same file size, which orbax
  would restore silently) are found by its digest: the run names the file,
  resumes from the checkpoint before it and ends as the uninterrupted run."""
  workdir = tmp_path / 'damaged'
  shutil.copytree(env.reference_workdir, workdir)
  digest_dir = workdir / train.CHECKPOINT_DIGEST_DIR
  # Digests of the kept checkpoints only (step 2's went with it).
  assert sorted(p.name for p in digest_dir.iterdir()) == ['4.json', '6.json']
  victim = max((p for p in (workdir / train.CHECKPOINT_DIR / '6').rglob('*')
                if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(victim.read_bytes())
  data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
  victim.write_bytes(bytes(data))
  capsys.readouterr()
  resumed = train.train(env.config(), [env.records], tokenizer=env.tokenizer,
                        workdir=workdir, mesh=_one_device(env.config()))
  out = capsys.readouterr().out
  assert f'Damaged checkpoint (checksum mismatch): {victim};' in out
  reference = _losses(env.reference.history)
  assert _losses(resumed.history) == {5: reference[5], 6: reference[6]}
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(resumed.params),
               jax.device_get(env.reference.params))
  # The re-saved step 6 has a fresh digest that matches it.
  assert json.loads((digest_dir / '6.json').read_text()) == (
      workdir_lib.directory_digest(workdir / train.CHECKPOINT_DIR / '6'))


def test_an_unreadable_digest_is_named_and_its_checkpoint_restored(
    env, tmp_path, capsys):
  """A damaged digest file (truncated JSON) is reported by path; the intact
  checkpoint it belonged to is still restored, with no traceback."""
  workdir = tmp_path / 'bad_digest'
  shutil.copytree(env.reference_workdir, workdir)
  digest = workdir / train.CHECKPOINT_DIGEST_DIR / '6.json'
  digest.write_text(digest.read_text()[:20])
  capsys.readouterr()
  resumed = train.train(env.config(), [env.records], tokenizer=env.tokenizer,
                        workdir=workdir, mesh=_one_device(env.config()))
  out = capsys.readouterr().out
  assert (f'Checkpoint digest {digest} is unreadable; restoring checkpoint 6 '
          'unchecked.') in out
  assert resumed.history == ()  # Step 6 of 6 restored: nothing to run.
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(resumed.params),
               jax.device_get(env.reference.params))


def test_final_params_load_into_gemma_and_generate(env):
  loaded = gm.ckpts.load_params(env.reference.params_path)
  model = models.build_model(env.config().model)
  assert (jax.tree.structure(loaded) ==
          jax.tree.structure(model.abstract_params()))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded),
               jax.device_get(env.reference.params))
  sampler = gm.text.Sampler(model=model.module, params=loaded,
                            tokenizer=env.tokenizer, cache_length=64,
                            max_out_length=8, pad_length=None)
  output = sampler.sample('What is 3 plus 4?', max_new_tokens=4,
                          return_state=True)
  assert isinstance(output.text, str)
  assert int(np.asarray(output.state.step)) > 0


@dataclasses.dataclass
class StepEnv:
  config: ml_collections.ConfigDict
  trainer: train.Trainer
  params: models.Params
  batches: list[input_pipeline.Batch]


@pytest.fixture(scope='module')
def step_env(env) -> StepEnv:
  """The reference run's single-device step (k = 1; a cache hit) and a few
  packed batches."""
  config = env.config()
  trainer = train.make_trainer(config, num_steps=NUM_STEPS,
                               mesh=_one_device(config))
  pipeline = input_pipeline.build_pipeline(
      [env.records], env.tokenizer, train_config=config.train,
      chat_template=False, seed=0)
  batches = [pipeline.next_batch() for _ in range(2)]
  return StepEnv(config=config, trainer=trainer,
                 params=_random_params(trainer.base_model), batches=batches)


def _run_steps(trainer, params, batches, frozen=None):
  state = trainer.init_state(jax.random.key(0), params)
  history = []
  for batch in batches:
    state, metrics = trainer.step_fn(state, trainer.put_batch(batch), frozen)
    history.append(jax.device_get(metrics))
  return jax.device_get(state.params), history


def test_prompt_tokens_contribute_nothing_to_the_gradient(step_env):
  batch = step_env.batches[0]
  params, (metrics,) = _run_steps(step_env.trainer, step_env.params, [batch])
  prompt = ~batch['loss_mask']
  assert prompt.sum() > batch['loss_mask'].sum() / 2
  # Other targets wherever the loss is masked (prompt and padding).
  rng = np.random.default_rng(1)
  other = dict(batch, targets=np.where(
      prompt, rng.integers(3, 400, batch['targets'].shape),
      batch['targets']).astype(np.int32))
  other_params, (other_metrics,) = _run_steps(step_env.trainer,
                                              step_env.params, [other])
  assert other_metrics['loss'] == metrics['loss']
  assert other_metrics['grad_norm'] == pytest.approx(metrics['grad_norm'],
                                                     rel=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-9),
               other_params, params)
  # With nothing to learn (empty loss mask): zero loss, zero gradient.
  nothing = dict(batch, loss_mask=np.zeros_like(batch['loss_mask']))
  _, (empty_metrics,) = _run_steps(step_env.trainer, step_env.params,
                                   [nothing])
  assert empty_metrics['loss'] == 0 and empty_metrics['grad_norm'] == 0


def test_gradient_accumulation_equals_larger_batch(step_env):
  params, history = _run_steps(step_env.trainer, step_env.params,
                               step_env.batches)
  accum = train.make_trainer(_with(step_env.config, grad_accum_steps=4),
                             num_steps=NUM_STEPS, mesh=step_env.trainer.mesh)
  accum_params, accum_history = _run_steps(accum, step_env.params,
                                           step_env.batches)
  for metrics, accum_metrics in zip(history, accum_history):
    for name in ('loss', 'accuracy', 'grad_norm', 'loss_tokens'):
      np.testing.assert_allclose(accum_metrics[name], metrics[name],
                                 rtol=2e-5, err_msg=name)
  # Adam's first steps are ~lr * sign(g): compare against the lr scale.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5),
               accum_params, params)


def _with(config, **train_overrides):
  config = ml_collections.ConfigDict(config.to_dict())
  config.train.update(train_overrides)
  return config


_ONE_VS_EIGHT = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import test_train
    print(json.dumps(test_train.one_vs_eight_devices(sys.argv[2])))
''')


def one_vs_eight_devices(tokenizer_path: str,
                         one: train.Trainer | None = None) -> dict[str, Any]:
  """Two steps on 1 device and on a (data 1, fsdp 4, tensor 2) mesh.

  The 8-device run also recomputes every block (remat 'full'). `one`: an
  already built single-device trainer of `make_config`'s settings.
  """
  tokenizer = tokenizer_lib.load_tokenizer(tokenizer_path)
  config = make_config(tokenizer, tokenizer_path)
  one = one or train.make_trainer(config, num_steps=NUM_STEPS,
                                  mesh=_one_device(config))
  config8 = _with(config, remat_policy='full')
  config8.mesh.shape = (1, 4, 2)
  eight = train.make_trainer(config8, num_steps=NUM_STEPS,
                             mesh=sharding_lib.make_mesh(config8.mesh))
  assert eight.mesh.devices.size == 8
  embedding = eight.state_shardings.params['embedder']['input_embedding']
  assert embedding.spec == PartitionSpec('tensor', 'fsdp')
  pipeline = input_pipeline.build_pipeline(
      [_records()], tokenizer, train_config=config.train, chat_template=False,
      seed=0)
  batches = [pipeline.next_batch() for _ in range(2)]
  params = _random_params(one.base_model)
  one_params, one_history = _run_steps(one, params, batches)
  eight_params, eight_history = _run_steps(eight, params, batches)
  diffs = jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.abs(a - b).max()), one_params, eight_params))
  return {'one_losses': [float(m['loss']) for m in one_history],
          'eight_losses': [float(m['loss']) for m in eight_history],
          'max_param_diff': max(diffs)}


def test_loss_on_eight_devices_equals_one(env, step_env):
  if jax.device_count() >= 8:  # conftest.py simulates 8 CPU devices.
    result = one_vs_eight_devices(env.tokenizer_path, step_env.trainer)
  else:  # Simulated devices must be set before jax starts: a new process.
    process = subprocess.run(
        [sys.executable, '-c', _ONE_VS_EIGHT, str(REPO_ROOT / 'tests'),
         env.tokenizer_path],
        env={**os.environ, 'PYTHONPATH': str(REPO_ROOT),
             'XLA_FLAGS': '--xla_force_host_platform_device_count=8'},
        capture_output=True, text=True, timeout=600, check=True)
    result = json.loads(process.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(result['eight_losses'], result['one_losses'],
                             rtol=1e-5)
  # Adam's first steps are ~lr * sign(g) (lr = 3e-3), which magnifies float
  # noise where g ~ 0.
  assert result['max_param_diff'] < 1e-4


def test_lora_trains_adapters_only_and_merges_to_plain_params(env):
  config = env.config(lora_rank=2, lora_alpha=4.0, num_steps=3,
                      learning_rate=1e-2, weight_decay=0.0)
  base_model = models.build_model(config.model)
  base = _random_params(base_model, seed=3)
  workdir = env.tmp / 'lora'
  result = train.train(config, [env.records], tokenizer=env.tokenizer,
                       workdir=workdir, init_params=base)
  losses = [m['loss'] for _, m in result.history]
  assert losses[-1] < losses[0]

  # Checkpoints hold the adapters only.
  state_dir = workdir / train.CHECKPOINT_DIR / '3' / 'state'
  saved = ocp.StandardCheckpointer().metadata(state_dir)
  saved_tree = getattr(saved, 'item_metadata', saved)
  saved_params = [sharding_lib.path_to_str(path) for path, _ in
                  jax.tree_util.tree_leaves_with_path(saved_tree['params'])]
  assert saved_params and all('/lora/' in p for p in saved_params)

  # The final params are the plain tree: base + scale * a @ b.
  adapters = gm.ckpts.load_params(workdir / train.FINAL_LORA_DIR)
  final = jax.device_get(result.params)
  assert jax.tree.structure(final) == jax.tree.structure(base)
  merged = jax.device_get(train.merge_lora_params(base, adapters, scale=2.0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               final, merged)
  changed = final['layer_0']['attn']['q_einsum']['w'] - base['layer_0'][
      'attn']['q_einsum']['w']
  assert np.abs(changed).max() > 1e-4
  np.testing.assert_array_equal(final['embedder']['input_embedding'],
                                base['embedder']['input_embedding'])

  # The merged plain model computes what the LoRA model computes.
  lora_model = train.training_model(base_model, config.train)
  rng = np.random.default_rng(0)
  random_adapters = jax.tree.map(
      lambda x: rng.normal(0, 0.2, x.shape).astype(np.float32), adapters)
  batch = input_pipeline.build_pipeline(
      [env.records], env.tokenizer, train_config=config.train,
      chat_template=False, seed=0).next_batch()
  lora_loss, _ = train.loss_terms(random_adapters, base, batch,
                                  model=lora_model, lora_scale_value=2.0)
  merged_loss, _ = train.loss_terms(
      train.merge_lora_params(base, random_adapters, scale=2.0), None, batch,
      model=base_model)
  np.testing.assert_allclose(merged_loss, lora_loss, rtol=1e-5)


def test_remat_policy_wraps_every_block(env):
  config = env.config()
  base_model = models.build_model(config.model)
  params = base_model.abstract_params()
  batch = {k: jax.ShapeDtypeStruct((2, 16), jnp.bool_ if k == 'loss_mask'
                                   else jnp.int32)
           for k in input_pipeline.BATCH_KEYS}
  counts = {}
  for policy in ('none', 'full', 'dots_with_no_batch_dims_saveable'):
    model = train.training_model(base_model, _with(config,
                                                   remat_policy=policy).train)
    jaxpr = jax.make_jaxpr(jax.grad(
        lambda p, b, m=model: train.loss_terms(p, None, b, model=m)[0]))(
            params, batch)
    counts[policy] = str(jaxpr).count('remat') + str(jaxpr).count(
        'checkpoint[')
  assert counts['none'] == 0
  assert counts['full'] >= base_model.config.num_layers
  assert counts['dots_with_no_batch_dims_saveable'] >= (
      base_model.config.num_layers)
  with pytest.raises(ValueError, match='remat_policy'):
    train.resolve_remat_policy('everything_twice')


def test_bad_config_raises_naming_the_field(env):
  with pytest.raises(ValueError, match='config.train.optimizer'):
    optim.make_optimizer(env.config(optimizer='sgd').train, 10)
  with pytest.raises(ValueError, match='config.train.lr_schedule'):
    optim.make_optimizer(env.config(lr_schedule='step').train, 10)
  with pytest.raises(ValueError, match='grad_accum_steps'):
    train.validate_config(env.config(grad_accum_steps=3), 1)
  with pytest.raises(ValueError, match='devices'):
    train.validate_config(env.config(batch_size=4), 8)
  with pytest.raises(ValueError, match='workdir'):
    train.train(env.config(), [env.records], tokenizer=env.tokenizer)


def test_optimizer_schedule_decay_mask_and_state_shardings(env):
  config = env.config(warmup_steps=4, lr_schedule='linear', end_lr_factor=0.0)
  schedule = optim.learning_rate_schedule(config.train, num_steps=12)
  np.testing.assert_allclose(
      [float(schedule(s)) for s in (0, 3, 4, 8, 12)],
      [0.75e-3, 3e-3, 3e-3, 1.5e-3, 0.0], rtol=1e-6, atol=1e-9)
  model = models.build_model(config.model)
  abstract = model.abstract_params()
  mask = optim.weight_decay_mask(abstract, config.train.weight_decay_exclude)
  assert not mask['embedder']['input_embedding']
  assert not mask['final_norm']['scale']
  assert not mask['layer_0']['pre_attention_norm']['scale']
  assert mask['layer_0']['attn']['q_einsum']['w']
  assert mask['layer_0']['mlp']['linear']

  mesh = sharding_lib.make_mesh(ml_collections.ConfigDict(
      {'shape': (1, -1, 1)}))
  shardings = sharding_lib.param_shardings(abstract, mesh,
                                           transpose_gating_einsum=False)
  for name in optim.OPTIMIZERS:
    optimizer, _ = optim.make_optimizer(
        _with(config, optimizer=name).train, 12)
    state_shardings = optim.opt_state_shardings(optimizer, abstract,
                                                shardings, mesh)
    leaves = jax.tree.leaves(
        jax.eval_shape(optimizer.init, abstract))
    specs = jax.tree.leaves(state_shardings)
    assert len(leaves) == len(specs)
    # Some state leaves are sharded like their params.
    assert any(s.spec != PartitionSpec() for s in specs), name

  # LoRA adapters have sharding rules too.
  lora_model = train.training_model(model, _with(config, lora_rank=4).train)
  lora_abstract = peft.split_params(jax.eval_shape(
      lambda: lora_model.module.init(jax.random.key(0),
                                     jnp.ones((1, 1), jnp.int32))['params']
  )).lora
  lora_specs = sharding_lib.param_specs(lora_abstract, mesh,
                                        transpose_gating_einsum=False)
  assert lora_specs['layer_0']['mlp']['_LoRAEinsum_linear']['lora']['b'] == (
      PartitionSpec(None, 'fsdp'))


def test_model_flops_and_peak_table():
  config = models.build_model(
      config_lib.base_config().model).config
  flops = train.model_flops_per_token(config, 1000, 16)
  assert flops == 6 * 1000 + 12 * config.num_layers * config.num_heads * (
      config.head_dim) * 16
  assert train.model_flops_per_token(config, 1000, 16,
                                     trained_fraction=0) < flops
  assert train.device_peak_flops(jax.devices()[0]) is None  # CPU.

  class _H100:
    device_kind = 'NVIDIA H100 80GB HBM3'
  assert train.device_peak_flops(_H100()) == 989e12


def _log_softmax(logits):
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_heldout_loss_is_the_mean_completion_token_cross_entropy(tmp_path):
  """`train.mean_loss` over `evaluation_batches` equals the cross-entropy
  computed by hand (numpy, each example alone, unpacked) over the completion
  tokens of every example, divided by their number: prompt tokens and
  padding rows count for nothing, and every example counts once."""
  records = _records(30)
  tokenizer_path = str(tmp_path / 'tokenizer.model')
  tokenizer = tokenizer_lib.train_sentencepiece(
      [r['prompt'] + r['completion'] for r in records], tokenizer_path,
      vocab_size=420)
  config = make_config(tokenizer, tokenizer_path, batch_size=2,
                       max_seq_len=32)
  trainer = train.make_trainer(config, num_steps=1, mesh=_one_device(config))
  params = _random_params(trainer.base_model, seed=3)
  heldout = [records[4], records[17], records[29]]
  source = input_pipeline.tokenize_source(
      heldout, tokenizer, chat_template=False, max_seq_len=32)
  batches = input_pipeline.evaluation_batches(source, batch_size=2,
                                              max_seq_len=32)
  # One example per row here: 2 batches, the second with a padding row.
  assert len(batches) == 2 and not batches[1]['loss_mask'][1].any()

  total, count = 0.0, 0
  for record in heldout:
    ids, prompt_length = input_pipeline.encode_example(
        tokenizer, record['prompt'], record['completion'],
        chat_template=False)
    logits = np.asarray(trainer.base_model.apply(
        params, jnp.asarray(ids[None, :-1])).logits[0], np.float64)
    log_probs = _log_softmax(logits)
    # Prediction j is of token j + 1; the completion starts at prompt_length.
    for j in range(prompt_length - 1, len(ids) - 1):
      total -= log_probs[j, ids[j + 1]]
      count += 1
  assert count < sum(len(input_pipeline.encode_example(
      tokenizer, r['prompt'], r['completion'], chat_template=False)[0]) - 1
                     for r in heldout)  # The prompts are left out.
  expected = total / count

  loss = train.mean_loss(trainer, params, None, batches)
  assert loss == pytest.approx(expected, rel=1e-5)
  # Not the mean of the per-batch means (the batches hold different counts).
  per_batch = [train.mean_loss(trainer, params, None, [b]) for b in batches]
  assert abs(np.mean(per_batch) - expected) > 1e-4
  assert train.mean_loss(trainer, params, None, []) is None
