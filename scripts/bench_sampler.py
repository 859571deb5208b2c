r"""Benchmarks our sampler against `gm.text.Sampler` (and decode at Gemma2-2B
shapes on a GPU).

Comparison: both samplers get the same model (`gemma2_tiny`, float32, random
weights), the same prompts (256 problems, 4 samples each, ragged prompts of
15 to 226 tokens, about GSM8K's), the same settings (temperature 1.0, 128
new tokens), the same rows per batch (64, samples of a problem side by side)
and the same prompt-length buckets, in one process, after a warm-up run of each
(nothing compiles while timed). `gm.text.Sampler` gets `cache_length` = what
the run needs (largest prompt bucket + max_new_tokens), `max_out_length` =
max_new_tokens and the buckets as `pad_length`: the peer at its best. Runs
alternate between the two; each reports its best run (other processes on the
machine only ever add time). Tokens/s counts generated tokens (up to and
including an end token) per second of wall time for the whole call
(tokenization, prefill, decode, detokenization).

Roofline (by default only when jax's backend is a GPU; `--roofline=on` runs
it anywhere, e.g. `--roofline_variant=gemma2_tiny` as a smoke test): decode
tokens/s at Gemma2-2B shapes (random bf16 weights) at batch 1 and 256, and
the fraction of the HBM-bandwidth roofline (params + the KV cache read per
step / step time, against the GPU's peak).

  python scripts/bench_sampler.py

The last line printed is `speedup_vs_gemma_sampler=<float>`.

Real lengths (`--workload=real_lengths`): the continuous engine, the static
engine and gm.text.Sampler on the same model and prompts, each (problem,
sample) row with a target length drawn (seeded) from a file of completion
lengths in characters (divided by `--chars_per_token`). No token ends a row
(EOS does not stop ours and is forbidden to gm's), so rows end at their
targets through the per-row limit; gm.text.Sampler runs each batch of
`--batch_size` rows to its longest target. Each engine first runs the whole
workload with 1-token rows (compiles every prompt bucket's programs), then
once for real. Printed per engine: useful tokens/s (target tokens only),
slot utilization (useful row-steps / computed row-steps), then
`speedup_vs_static=<x>` and, last, `speedup_vs_gemma_sampler=<y>`.

  python scripts/bench_sampler.py --workload=real_lengths --num_problems=512 \
      --lengths=../shared/data/gsm8k/gemma2_2b_it_completion_chars.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top
import jax
import numpy as np

from tpt_jax import config as config_lib
from tpt_jax import models
from tpt_jax import sampling
from tpt_jax import sampling_continuous
from tpt_jax import sampling_utils
from tpt_jax import tokenizer as tokenizer_lib
from gemma import gm  # pylint: disable=g-bad-import-order
# pylint: enable=g-import-not-at-top

_WORDS = ('the', 'cat', 'sat', 'on', 'a', 'mat', 'question', 'answer', 'is',
          'what', 'plus', 'minus', 'times', 'how', 'many', 'apples', 'does',
          'she', 'have', 'left', 'after', 'giving', 'away', 'some', 'to',
          'her', 'friend', 'and', 'then', 'buys', 'more', 'at', 'store')

# Peak HBM bandwidth (bytes/s) of the GPUs we know.
_PEAK_BANDWIDTH = {'H100': 3.35e12, 'H200': 4.8e12, 'A100': 2.0e12}


def _make_prompts(rng: np.random.Generator, count: int, min_words: int,
                  max_words: int) -> list[str]:
  prompts = []
  for _ in range(count):
    num_words = int(rng.integers(min_words, max_words + 1))
    words = rng.choice(_WORDS, size=num_words)
    numbers = rng.integers(0, 100, size=num_words)
    prompts.append('Question: ' + ' '.join(
        f'{w} {n}' if i % 3 == 0 else str(w)
        for i, (w, n) in enumerate(zip(words, numbers))) + '? Answer:')
  return prompts


def _train_tokenizer(vocab_size: int, workdir: str) -> tokenizer_lib.Tokenizer:
  rng = np.random.default_rng(0)
  texts = _make_prompts(rng, 2000, 5, 30)
  return tokenizer_lib.train_sentencepiece(
      texts, os.path.join(workdir, 'bench.model'), vocab_size=vocab_size)


def _run_ours(sampler: sampling.Sampler, prompts: list[str],
              settings: sampling.SamplingSettings) -> tuple[int, float]:
  start = time.perf_counter()
  results = sampler.sample_all(prompts, settings, show_progress=False)
  seconds = time.perf_counter() - start
  return sum(r.num_generated_tokens for r in results), seconds


def _run_gemma(sampler: gm.text.Sampler, prompts: list[str],
               settings: sampling.SamplingSettings, seed: int
               ) -> tuple[int, float]:
  """Same rows per batch as ours, samples of a problem next to each other."""
  rows = [p for p in prompts for _ in range(settings.num_samples_per_problem)]
  method = (gm.text.Greedy() if settings.greedy
            else gm.text.RandomSampling(temperature=settings.temperature))
  generated = 0
  start = time.perf_counter()
  for begin in range(0, len(rows), settings.batch_size):
    out = sampler.sample(rows[begin:begin + settings.batch_size],
                         max_new_tokens=settings.max_new_tokens,
                         sampling=method, rng=seed + begin, return_state=True)
    generated += int(np.sum(np.asarray(out.state.predicted_tokens) != 0))
  seconds = time.perf_counter() - start
  return generated, seconds


def _cpu_comparison(args) -> float:
  """Ours vs gm.text.Sampler on a small model; returns the speedup."""
  workdir = tempfile.mkdtemp(prefix='bench_sampler_')
  tokenizer = _train_tokenizer(args.vocab_size, workdir)
  config = config_lib.base_config()
  config.model.variant = args.variant
  config.model.vocab_size = tokenizer.vocab_size
  config.model.param_dtype = args.dtype
  config.model.compute_dtype = args.dtype
  model = models.build_model(config.model)
  params = model.init_params(jax.random.key(0))
  rng = np.random.default_rng(1)
  prompts = _make_prompts(rng, args.num_problems, args.min_words,
                          args.max_words)
  lengths = [len(tokenizer_lib.encode_prompt(tokenizer, p, chat_template=False))
             for p in prompts]
  buckets = tuple(int(b) for b in args.buckets.split(','))
  settings = sampling.SamplingSettings(
      num_samples_per_problem=args.num_samples,
      max_new_tokens=args.max_new_tokens,
      temperature=args.temperature,
      batch_size=args.batch_size,
      prompt_length_buckets=buckets,
      seed=0,
  )
  cache_length = sampling_utils.bucket_for_length(max(lengths), buckets) + (
      args.max_new_tokens)
  print(f'model: {args.variant} ({args.dtype}), vocab {tokenizer.vocab_size}, '
        f'{models.count_params(params) / 1e6:.2f}M params; backend '
        f'{jax.default_backend()} x{jax.device_count()}')
  print(f'prompts: {len(prompts)} x {args.num_samples} samples, prompt tokens '
        f'{min(lengths)}..{max(lengths)} (mean {np.mean(lengths):.0f}), '
        f'max_new_tokens {args.max_new_tokens}, temperature '
        f'{args.temperature}, {args.batch_size} rows per batch, buckets '
        f'{buckets}; gm cache_length {cache_length}')

  ours = sampling.Sampler(model, params, tokenizer=tokenizer)
  peer = gm.text.Sampler(model=model.module, params=models.cast(
      params, model.compute_dtype), tokenizer=tokenizer,
                         cache_length=cache_length,
                         max_out_length=args.max_new_tokens,
                         pad_length=buckets)

  # Warm-up: every program both will use (same prompts, so same shapes).
  _run_ours(ours, prompts, settings)
  _run_gemma(peer, prompts, settings, seed=0)

  # Alternate the two so that load from other processes hits both alike;
  # report each one's best run (interference only ever adds time).
  figures = {'ours': [], 'gemma': []}
  for repeat in range(args.repeats):
    tokens, seconds = _run_ours(
        ours, prompts, dataclasses.replace(settings, seed=repeat + 1))
    figures['ours'].append(tokens / seconds)
    tokens, seconds = _run_gemma(peer, prompts, settings, seed=repeat + 1)
    figures['gemma'].append(tokens / seconds)
  rates = {}
  for name, runs in figures.items():
    rates[name] = max(runs)
    print(f'{name:>6}: {rates[name]:.0f} tokens/s (best of {len(runs)} runs; '
          f'all: {", ".join(f"{r:.0f}" for r in runs)})')
  print(f'ours compiled {ours.num_compiled_programs} programs')
  return rates['ours'] / rates['gemma']


def _target_lengths(args, num_rows: int) -> np.ndarray:
  """[num_rows] token targets drawn (seeded) from the length file."""
  with open(args.lengths) as f:
    data = json.load(f)
  chars = np.asarray(data['chars'] if isinstance(data, dict) else data,
                     np.float64)
  tokens = np.maximum(1, np.round(chars / args.chars_per_token)).astype(int)
  return np.random.default_rng(args.length_seed).choice(tokens, size=num_rows)


def _real_lengths(args) -> None:
  """Continuous vs static engine vs gm.text.Sampler on real trace lengths.

  Every (problem, sample) row gets a drawn target; no token ends a row (EOS
  does not stop ours and is forbidden to gm's), so each row stops at its
  target through the per-row limit (gm: at its batch's longest target).
  Useful tokens = the targets; utilization = useful row-steps / computed
  row-steps.
  """
  workdir = tempfile.mkdtemp(prefix='bench_sampler_')
  tokenizer = _train_tokenizer(args.vocab_size, workdir)
  model, params = _model_and_params(args, tokenizer)
  prompts = _make_prompts(np.random.default_rng(1), args.num_problems,
                          args.min_words, args.max_words)
  lengths = [len(tokenizer_lib.encode_prompt(tokenizer, p, chat_template=False))
             for p in prompts]
  num_samples = args.num_samples
  targets = _target_lengths(args, len(prompts) * num_samples).reshape(
      len(prompts), num_samples)
  useful = int(targets.sum())
  buckets = tuple(int(b) for b in args.buckets.split(','))
  settings = sampling.SamplingSettings(
      num_samples_per_problem=num_samples,
      max_new_tokens=int(targets.max()),
      temperature=args.temperature,
      batch_size=args.batch_size,
      prompt_length_buckets=buckets,
      eos_token_ids=(),
      seed=0,
  )
  for name in ('cache_tokens_per_slot', 'steps_per_call'):
    if getattr(args, name):
      settings = dataclasses.replace(settings, **{name: getattr(args, name)})
  print(f'model: {args.variant} ({args.dtype}), vocab {tokenizer.vocab_size}; '
        f'backend {jax.default_backend()} x{jax.device_count()}')
  print(f'workload real_lengths: {len(prompts)} problems x {num_samples} '
        f'samples, prompt tokens {min(lengths)}..{max(lengths)}, target tokens '
        f'{targets.min()}..{targets.max()} (mean {targets.mean():.1f}, from '
        f'{os.path.basename(args.lengths)} at {args.chars_per_token} chars per '
        f'token), {args.batch_size} rows per batch / slots, temperature '
        f'{args.temperature}')
  limits = [row.tolist() for row in targets]
  ones = [[1] * num_samples for _ in prompts]

  engines = {}
  static = sampling.Sampler(model, params, tokenizer=tokenizer)
  continuous = sampling_continuous.ContinuousSampler(model, params,
                                                     tokenizer=tokenizer)
  for name, sampler in (('continuous', continuous), ('static', static)):
    # Warm-up: every row to 1 token compiles the programs of every prompt
    # bucket (per-row limits are inputs, not shapes).
    sampler.sample_all(prompts, settings, max_new_tokens=ones,
                       show_progress=False)
    start = time.perf_counter()
    results = sampler.sample_all(prompts, settings, max_new_tokens=limits,
                                 show_progress=False)
    seconds = time.perf_counter() - start
    made = sum(r.num_generated_tokens for r in results)
    assert made == useful, (name, made, useful)
    if name == 'continuous':
      utilization = sampler.last_run_stats['utilization']
    else:
      plans = sampling_utils.plan_batches(
          lengths, num_samples=num_samples, batch_size=args.batch_size,
          buckets=buckets)
      computed = sum(
          len(plan.row_problem) * max(
              targets[p, s] for p, s in zip(plan.row_problem, plan.row_sample)
              if p != sampling_utils.PADDING_ROW) for plan in plans)
      utilization = useful / computed
    engines[name] = (useful / seconds, utilization, seconds)

  # gm.text.Sampler: batches of rows in order, each run to its longest target.
  rows = [(p, s) for p in range(len(prompts)) for s in range(num_samples)]
  cache_length = sampling_utils.bucket_for_length(max(lengths), buckets) + (
      settings.max_new_tokens)
  peer = gm.text.Sampler(
      model=model.module, params=models.cast(params, model.compute_dtype),
      tokenizer=tokenizer, cache_length=cache_length,
      max_out_length=settings.max_new_tokens, pad_length=buckets,
      forbidden_tokens=[tokenizer_lib.EOS_ID, tokenizer_lib.END_OF_TURN_ID])

  def run_gemma(batches, warm_up=False):
    computed = 0
    for batch in batches:
      longest = 1 if warm_up else max(int(targets[p, s]) for p, s in batch)
      peer.sample([prompts[p] for p, _ in batch], max_new_tokens=longest,
                  sampling=gm.text.RandomSampling(
                      temperature=args.temperature), rng=0)
      computed += args.batch_size * longest
    return computed

  batches = [rows[i:i + args.batch_size]
             for i in range(0, len(rows), args.batch_size)]
  batches = [b + [b[-1]] * (args.batch_size - len(b)) for b in batches]
  run_gemma(batches, warm_up=True)
  start = time.perf_counter()
  computed = run_gemma(batches)
  seconds = time.perf_counter() - start
  engines['gemma_sampler'] = (useful / seconds, useful / computed, seconds)

  for name, (rate, utilization, seconds) in engines.items():
    print(f'{name:>14}: {rate:.0f} useful tokens/s, slot utilization '
          f'{utilization:.3f} ({useful} tokens in {seconds:.1f}s)')
  print(f'continuous: {continuous.last_run_stats}')
  speedup = engines['continuous'][0] / engines['static'][0]
  print(f'speedup_vs_static={speedup:.2f}')
  print('speedup_vs_gemma_sampler='
        f"{engines['continuous'][0] / engines['gemma_sampler'][0]:.2f}")


def _model_and_params(args, tokenizer):
  config = config_lib.base_config()
  config.model.variant = args.variant
  config.model.vocab_size = tokenizer.vocab_size
  config.model.param_dtype = args.dtype
  config.model.compute_dtype = args.dtype
  model = models.build_model(config.model)
  return model, model.init_params(jax.random.key(0))


def _decode_roofline(args) -> None:
  """Decode tokens/s at Gemma2-2B shapes (random bf16 weights) and the
  fraction of the HBM-bandwidth roofline it reaches."""
  config = config_lib.base_config()
  config.model.variant = args.roofline_variant
  config.model.param_dtype = 'bfloat16'
  config.model.compute_dtype = 'bfloat16'
  model = models.build_model(config.model)
  params = jax.jit(model.init_params)(jax.random.key(0))
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  device_kind = jax.devices()[0].device_kind
  peak = next((v for k, v in _PEAK_BANDWIDTH.items() if k in device_kind),
              None)
  transformer = model.config
  vocab_size = transformer.num_embed
  # k and v of every layer, bf16.
  kv_bytes_per_slot = (2 * transformer.num_layers * transformer.num_kv_heads
                       * transformer.head_dim * 2)
  sampler = sampling.Sampler(model, params)
  prompt_length = args.roofline_prompt_length
  new_tokens = args.roofline_new_tokens
  rng = np.random.default_rng(0)
  print(f'decode roofline: {args.roofline_variant} shapes on {device_kind}, '
        f'{param_bytes / 1e9:.2f} GB of bf16 params, prompt {prompt_length} '
        f'tokens, {new_tokens} new tokens, no early stop.')
  for batch in (1, 256):
    prompts = [[tokenizer_lib.BOS_ID] + [
        int(t) for t in rng.integers(200, vocab_size, size=prompt_length - 1)]
               for _ in range(batch)]
    settings = sampling.SamplingSettings(
        max_new_tokens=new_tokens, temperature=1.0, batch_size=batch,
        prompt_length_buckets=(prompt_length,),
        eos_token_ids=())  # Never stop early: every row decodes every step.
    prefill_only = dataclasses.replace(settings, max_new_tokens=1)

    def timed(run_settings):
      start = time.perf_counter()
      results = sampler.sample_all(prompts, run_settings, show_progress=False)
      return time.perf_counter() - start, sum(
          r.num_generated_tokens for r in results)

    timed(settings)  # Compile.
    timed(prefill_only)  # Compile.
    prefill_seconds = min(timed(prefill_only)[0] for _ in range(2))
    seconds, tokens = min(timed(settings) for _ in range(2))
    steps = new_tokens - 1
    step_seconds = (seconds - prefill_seconds) / steps
    # gemma reads every cache slot it is given; with the growing cache, that
    # is the segment's length at each step.
    cache_slots = sampling_utils.decode_cache_lengths(
        prompt_length, new_tokens, settings.max_cache_segments)
    bytes_per_step = param_bytes + batch * kv_bytes_per_slot * float(
        np.mean(cache_slots))
    bandwidth = bytes_per_step / step_seconds
    line = (f'{args.roofline_variant} batch {batch}: '
            f'{batch / step_seconds:.0f} decode tokens/s '
            f'({step_seconds * 1e3:.2f} ms/step; {tokens} tokens in '
            f'{seconds:.2f}s incl. {prefill_seconds:.2f}s prefill), '
            f'{bytes_per_step / 1e9:.2f} GB read per step = '
            f'{bandwidth / 1e12:.2f} TB/s')
    if peak:
      line += (f' = {bandwidth / peak:.1%} of the {peak / 1e12:.2f} TB/s '
               'roofline')
    print(line, flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--variant', default='gemma2_tiny')
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--vocab_size', type=int, default=512)
  parser.add_argument('--num_problems', type=int, default=256)
  parser.add_argument('--num_samples', type=int, default=4)
  parser.add_argument('--max_new_tokens', type=int, default=128)
  parser.add_argument('--temperature', type=float, default=1.0)
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument(
      '--buckets', default='16,20,24,32,40,48,64,80,96,112,128,160,192,224,256')
  parser.add_argument('--min_words', type=int, default=5)
  parser.add_argument('--max_words', type=int, default=110)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--roofline', default='auto',
                      choices=('auto', 'on', 'off'),
                      help='decode roofline at Gemma2-2B shapes; auto: on GPU')
  parser.add_argument('--roofline_variant', default='gemma2_2b')
  parser.add_argument('--roofline_prompt_length', type=int, default=128)
  parser.add_argument('--roofline_new_tokens', type=int, default=128)
  parser.add_argument('--workload', default='random',
                      choices=('random', 'real_lengths'))
  parser.add_argument(
      '--lengths', default=os.path.join(
          os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..',
          'shared', 'data', 'gsm8k', 'gemma2_2b_it_completion_chars.json'),
      help='real_lengths: JSON of completion lengths in characters')
  parser.add_argument('--chars_per_token', type=float, default=3.8)
  parser.add_argument('--length_seed', type=int, default=0)
  parser.add_argument('--cache_tokens_per_slot', type=int, default=0,
                      help='continuous engine; 0: the settings default')
  parser.add_argument('--steps_per_call', type=int, default=0,
                      help='continuous engine; 0: the settings default')
  args = parser.parse_args()
  if args.workload == 'real_lengths':
    _real_lengths(args)
    return
  if args.roofline == 'on' or (args.roofline == 'auto'
                               and jax.default_backend() == 'gpu'):
    _decode_roofline(args)
  speedup = _cpu_comparison(args)
  print(f'speedup_vs_gemma_sampler={speedup:.2f}')


if __name__ == '__main__':
  main()
