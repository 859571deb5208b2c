"""`tpt_jax.plan`: compiling a config's programs for a TPU slice from a CPU
host (libtpu's ahead-of-time compiler; no TPU attached)."""

import dataclasses
import importlib.util
import io
import os
import re
import subprocess
import sys
import types

import jax
import pytest

from tpt_jax import config as config_lib
from tpt_jax import models
from tpt_jax import plan
from tpt_jax import sampling
from tpt_jax import sampling_continuous
from tpt_jax import sharding as sharding_lib
from tpt_jax import topologies
from conftest import REPO_ROOT

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec('libtpu') is None,
    reason="libtpu is not installed (pip install -e '.[tpu]').")


def tiny_config():
  """gemma2_tiny in f32 with a small sampler, as configs/tiny.py."""
  config = config_lib.base_config()
  config.model.variant = 'gemma2_tiny'
  config.model.param_dtype = config.model.compute_dtype = 'float32'
  config.task.num_train_problems = 16
  config.task.num_test_problems = 8
  config.sampling.num_samples_per_problem = 2
  config.sampling.max_new_tokens = 16
  config.sampling.batch_size = 32
  config.sampling.prompt_length_buckets = (16, 32)
  config.sampling.max_cache_segments = 2
  config.train.batch_size = 8
  config.train.max_seq_len = 64
  config.train.num_steps = 4
  return config


def run_plan(config, topology, **kwargs):
  stdout, stderr = io.StringIO(), io.StringIO()
  status = plan.run(config, topology, stdout=stdout, stderr=stderr, **kwargs)
  return status, stdout.getvalue(), stderr.getvalue()


def test_tests_run_on_the_cpu_even_with_libtpu_installed():
  assert jax.default_backend() == 'cpu'
  assert all(d.platform == 'cpu' for d in jax.devices())


@needs_libtpu
def test_tiny_plan_fits_and_prints_the_sharded_param_bytes():
  status, out, err = run_plan(tiny_config(), 'v5e-4')
  assert status == plan.EXIT_FITS, out + err
  assert 'mesh data=1, fsdp=4, tensor=1' in out
  for name in ('train_step', 'think_prefill', 'think_decode',
               'think_decode_step', 'eval_prefill', 'eval_decode'):
    assert re.search(rf'^{name}: fits, ', out, re.M), (name, out)
  assert 'All 7 programs fit on v5e-4.' in out
  assert 'Round estimate: ' in out and 'est. MFU (model FLOPs): ' in out
  # The default engine (continuous) is the one planned: its pool, its
  # round estimate (16 problems x 2 samples on 32 slots).
  assert 'KV pool (' in out and '32 rows on 32 slots' in out

  # By hand: gemma2_tiny (vocab 512, embed 64, mlp 128, 4 heads and 2 kv
  # heads of 16, 4 layers) with f32 master weights. `embed` is split over
  # fsdp = 4 chips in every matrix; the norm scales (4 per layer + the
  # final one, 64 each) are replicated.
  embedding = 512 * 64
  per_layer = (4 * 64 * 16      # q_einsum
               + 2 * 2 * 64 * 16  # kv_einsum
               + 4 * 16 * 64    # attn_vec_einsum
               + 2 * 64 * 128   # gating_einsum
               + 128 * 64)      # linear
  matrices = embedding + 4 * per_layer
  norms = 4 * 4 * 64 + 64
  param_bytes_per_chip = 4 * (matrices // 4 + norms)
  assert param_bytes_per_chip == 184576
  printed = re.search(
      r'^train_step: .*\n  params \(trained, master dtype\): (\d+) bytes per '
      'chip', out, re.M)
  assert printed, out
  assert int(printed.group(1)) == param_bytes_per_chip
  # Sampling holds the params in compute dtype (f32 here), sharded alike.
  assert f'  params: {param_bytes_per_chip} bytes per chip' in out


@needs_libtpu
def test_a_model_too_large_for_the_slice_exits_3_naming_the_train_step():
  # Gemma2-27B full fine-tuning: f32 master weights + AdamW moments are
  # ~76 GiB per chip over 4 v5e chips, caught from the argument shardings
  # before compiling (so this stays fast).
  spec = importlib.util.spec_from_file_location(
      'gemma2_27b', REPO_ROOT / 'configs' / 'gemma2_27b.py')
  config_file = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config_file)
  status, out, _ = run_plan(config_file.get_config(), 'v5e-4',
                            groups=('train',))
  assert status == plan.EXIT_DOES_NOT_FIT
  assert re.search(
      r'^train_step: DOES NOT FIT, 76\.\d\d GiB of 15\.75 GiB usable', out,
      re.M), out
  assert re.search(r'DOES NOT FIT: train_step needs .* a v5e chip has 15.75 '
                   r'GiB usable \(over by 60\.\d\d GiB\)\. To change: .*lora_rank',
                   out), out


@needs_libtpu
def test_the_compilers_resource_exhausted_exits_3_with_the_overflow():
  # Tiny params, but [B, L, L] attention temporaries of 4096 rows of 2048
  # tokens: only the compiler sees that it cannot fit.
  config = tiny_config()
  config.train.batch_size = 4096
  config.train.max_seq_len = 2048
  status, out, _ = run_plan(config, 'v5e-4', groups=('train',))
  assert status == plan.EXIT_DOES_NOT_FIT
  assert 'compiler: RESOURCE_EXHAUSTED' in out
  needed = re.search(r'DOES NOT FIT: train_step needs ([\d.]+) GiB', out)
  assert needed and float(needed.group(1)) > 16, out


def test_an_unknown_slice_exits_2_listing_the_known_ones():
  result = subprocess.run(
      [sys.executable, '-m', 'tpt_jax.plan', '--config=configs/tiny.py',
       '--topology=v5e-12'], cwd=REPO_ROOT, capture_output=True, text=True,
      check=False, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''})
  assert result.returncode == 2, result.stderr
  assert "--topology='v5e-12' is not a known TPU slice" in result.stderr
  for name, libtpu_name in (('v4-16', 'v4:2x2x2'), ('v5e-16', 'v5e:4x4'),
                            ('v5p-32', 'v5p:2x2x4'), ('v6e-8', 'v6e:2x4')):
    assert re.search(rf'^{name} +{libtpu_name} ', result.stderr, re.M), name


def test_missing_libtpu_says_how_to_install_it(monkeypatch):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: (
      None if name == 'libtpu' else real_find_spec(name, *a)))
  status, _, err = run_plan(tiny_config(), 'v5e-4')
  assert status == plan.EXIT_BAD_INPUT
  assert "pip install -e '.[tpu]'" in err


def test_slice_names_count_chips_or_cores_as_cloud_tpu_does():
  # v4 / v5p names count TensorCores (2 per chip), v5e / v6e chips.
  assert topologies.get_topology('v4-8').num_chips == 4
  assert topologies.get_topology('v5p-32').libtpu_name == 'v5p:2x2x4'
  assert topologies.get_topology('v5e-16').libtpu_name == 'v5e:4x4'
  assert topologies.get_topology('v5e:4x4').name == 'v5e-16'
  with pytest.raises(topologies.UnknownTopologyError, match='v6e-256'):
    topologies.get_topology('v7-8')


def test_planned_sampling_programs_are_the_ones_the_sampler_runs():
  # The sampler's own jitted prefill/decode, built by a real (CPU) run for
  # the same settings, lower to the same program for the plan's abstract
  # arguments: the plan compiles what a run executes.
  config = tiny_config()
  config.sampling.stop_strings = ('\nQ:',)
  config.sampling.top_p = 0.9
  # Rows split over two mesh axes of size 2 (a size-1 axis would be dropped
  # from the real run's shardings: the same program, different text).
  config.mesh.shape = (2, 2, 1)
  model = models.build_model(config.model)
  mesh = sharding_lib.make_mesh(config.mesh, devices=jax.devices()[:4])
  settings = plan.think_settings(config)
  num_problems = config.task.num_train_problems
  (prefill, prefill_args), (decode, decode_args) = (
      sampling.abstract_batch_programs(model, mesh, settings,
                                       prompt_bucket=16,
                                       num_problems=num_problems))
  params = model.init_params(jax.random.key(0))
  # Stop strings need token bytes (given) and a tokenizer for the text.
  no_text = types.SimpleNamespace(decode=lambda ids: '')
  sampler = sampling.Sampler(model, params, mesh=mesh, tokenizer=no_text)
  sampler._token_bytes = [bytes([i % 256]) for i in range(  # pylint: disable=protected-access
      model.config.num_embed)]
  prompts = [[2] + [3 + (i + j) % 50 for j in range(5 + i % 9)]
             for i in range(num_problems)]
  sampler.sample_all(prompts, dataclasses.replace(settings, max_new_tokens=16),
                     show_progress=False)
  (real_prefill, real_decode), = sampler._programs.values()  # pylint: disable=protected-access
  assert (real_prefill.lower(*prefill_args).as_text() ==
          prefill.lower(*prefill_args).as_text())
  assert (real_decode.lower(*decode_args).as_text() ==
          decode.lower(*decode_args).as_text())


def test_planned_continuous_programs_are_the_ones_the_engine_runs():
  # As above for the continuous engine: its decode call and prefill, built
  # by a real (CPU) run, lower to the plan's programs for the plan's
  # abstract arguments.
  config = tiny_config()
  config.sampling.engine = 'continuous'
  config.sampling.top_p = 0.9
  config.mesh.shape = (2, 2, 1)
  model = models.build_model(config.model)
  mesh = sharding_lib.make_mesh(config.mesh, devices=jax.devices()[:4])
  settings = dataclasses.replace(plan.think_settings(config),
                                 prompt_length_buckets=(16,))
  programs = sampling_continuous.abstract_programs(model, mesh, settings,
                                                   prompt_bucket=16)
  assert set(programs) == {'prefill', 'decode', 'decode_step'}
  params = model.init_params(jax.random.key(0))
  sampler = sampling_continuous.ContinuousSampler(model, params, mesh=mesh)
  # Prompts of 14..16 tokens: prefills of 13..15 fall in the 16 bucket,
  # the decode's page table covers a 16-token bucket.
  prompts = [[2] + [3 + (i + j) % 50 for j in range(13 + i % 3)]
             for i in range(config.task.num_train_problems)]
  sampler.sample_all(prompts, settings, show_progress=False)
  real = {name: fn for (name, _), fn in sampler._jitted.items()}  # pylint: disable=protected-access
  for name in ('decode', 'prefill'):
    args = programs[name].args
    assert (real[name].lower(*args).as_text() ==
            programs[name].fn.lower(*args).as_text()), name
  # The pool the plan reports is the one the engine allocates.
  spec = sampling_continuous.decode_spec(settings, num_shards=4,
                                         prompt_bucket=16)
  pool = programs['decode_step'].args[1]
  assert pool.k.shape[1] == spec.num_pages == 4 * -(
      -(32 // 4) * config.sampling.cache_tokens_per_slot // 16)


@needs_libtpu
@pytest.mark.parametrize('variant', ['llama3_tiny', 'gpt2_tiny'])
def test_other_families_are_planned_with_their_own_decode_path(variant):
  config = tiny_config()
  config.model.variant = variant
  status, out, err = run_plan(config, 'v5e-4')
  assert status == plan.EXIT_FITS, out + err
  assert 'All 7 programs fit on v5e-4.' in out
  # The continuous engine's programs (its page pool), not the static ones.
  assert re.search(r'^think_decode_step: fits, .*\n  params: .*\n  KV pool',
                   out, re.M), out
