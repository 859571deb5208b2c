"""The Train stage's input: reading, masking, packing, order and its state."""

import json
import pathlib

import jax
import numpy as np
import pytest

from tpt_jax import config as config_lib
from tpt_jax import input_pipeline
from tpt_jax import models
from tpt_jax import tokenizer as tokenizer_lib
from tpt_jax import train

MAX_SEQ_LEN = 48


def _records(n, offset=0):
  return [{'prompt': f'What is {a} plus {a % 7}?',
           'completion': f' {a} plus {a % 7} is {a + a % 7}.' + ' ok' * (a % 5),
           'problem_id': f'p{a}'}
          for a in range(offset, offset + n)]


def write_tfds_dataset(records, directory, features=('prompt', 'completion')):
  """A TFDS dataset of string features (ArrayRecord), as records.py writes."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True)
  spec = tfds.features.FeaturesDict(
      {name: tfds.features.Text() for name in features})
  template = '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'
  writer = array_record_module.ArrayRecordWriter(
      str(directory / 'traces-train.array_record-00000-of-00001'),
      'group_size:1')
  for record in records:
    writer.write(spec.serialize_example({k: record[k] for k in features}))
  writer.close()
  split = tfds.core.SplitInfo(
      name='train', shard_lengths=[len(records)], num_bytes=0,
      filename_template=tfds.core.ShardedFileTemplate(
          data_dir=directory, template=template, dataset_name='traces',
          split='train', filetype_suffix='array_record'))
  tfds.folder_dataset.write_metadata(
      data_dir=directory, features=spec, split_infos=[split],
      filename_template=template, check_data=False)
  return directory


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  texts = [r['prompt'] + r['completion'] for r in _records(200)]
  return tokenizer_lib.train_sentencepiece(
      texts, tmp_path_factory.mktemp('tok') / 'tok.model', vocab_size=420)


def _pipeline(sources, tokenizer, **kwargs):
  tokenized = [input_pipeline.tokenize_source(
      s, tokenizer, chat_template=False, max_seq_len=MAX_SEQ_LEN)
               for s in sources]
  kwargs = {'batch_size': 4, 'max_seq_len': MAX_SEQ_LEN, 'seed': 0, **kwargs}
  return input_pipeline.InputPipeline(tokenized, **kwargs)


def test_tfds_source_is_tokenized_with_prompt_masked(tokenizer, tmp_path):
  records = _records(6)
  directory = write_tfds_dataset(records, tmp_path / 'round_1',
                                 features=('prompt', 'completion',
                                           'problem_id'))
  source = input_pipeline.tokenize_source(
      directory, tokenizer, chat_template=True, max_seq_len=MAX_SEQ_LEN)
  assert len(source) == 6
  for record, ids, prompt_length in zip(records, source.token_ids,
                                        source.prompt_lengths):
    prompt_ids = tokenizer_lib.encode_prompt(tokenizer, record['prompt'],
                                             chat_template=True)
    assert list(ids[:prompt_length]) == prompt_ids
    assert ids[-1] == tokenizer_lib.END_OF_TURN_ID
    assert tokenizer.decode([int(t) for t in ids[prompt_length:-1]]) == (
        record['completion'])

  pipeline = input_pipeline.InputPipeline([source], batch_size=2,
                                          max_seq_len=MAX_SEQ_LEN, seed=0)
  batch = pipeline.next_batch()
  assert set(batch) == set(input_pipeline.BATCH_KEYS)
  segments = [(r, s) for r in range(2)
              for s in set(batch['segment_ids'][r]) - {0}]
  assert len(segments) >= 2
  by_ids = {tuple(ids[:-1]): (ids, p) for ids, p in
            zip(source.token_ids, source.prompt_lengths)}
  for row, segment in segments:
    where = batch['segment_ids'][row] == segment
    inputs = batch['inputs'][row][where]
    ids, prompt_length = by_ids[tuple(inputs)]
    np.testing.assert_array_equal(batch['targets'][row][where], ids[1:])
    np.testing.assert_array_equal(batch['positions'][row][where],
                                  np.arange(len(ids) - 1))
    # Loss exactly on the completion and its terminator.
    mask = batch['loss_mask'][row][where]
    assert mask.sum() == len(ids) - prompt_length
    assert not mask[:prompt_length - 1].any() and mask[prompt_length - 1:].all()
  padding = batch['segment_ids'] == 0
  assert not batch['loss_mask'][padding].any()
  assert (batch['inputs'][padding] == 0).all()


def test_terminator_is_eos_without_chat_template_and_not_doubled(tokenizer):
  ids, prompt_length = input_pipeline.encode_example(
      tokenizer, 'What is 1 plus 1?', ' 2', chat_template=False)
  assert ids[0] == tokenizer_lib.BOS_ID and ids[-1] == tokenizer_lib.EOS_ID
  assert ids[prompt_length:].tolist().count(tokenizer_lib.EOS_ID) == 1
  chat, _ = input_pipeline.encode_example(
      tokenizer, 'What is 1 plus 1?', ' 2', chat_template=True)
  again, _ = input_pipeline.encode_example(
      tokenizer, 'What is 1 plus 1?', ' 2<end_of_turn>', chat_template=True)
  assert chat[-1] == tokenizer_lib.END_OF_TURN_ID
  assert again.tolist() == chat.tolist()
  empty, prompt_length = input_pipeline.encode_example(
      tokenizer, 'What is 1 plus 1?', '', chat_template=False)
  assert empty[prompt_length:].tolist() == [tokenizer_lib.EOS_ID]


def test_bad_sources_raise_naming_the_input(tokenizer, tmp_path):
  empty_dir = tmp_path / 'empty_round'
  empty_dir.mkdir()
  with pytest.raises(FileNotFoundError, match='empty_round'):
    input_pipeline.tokenize_source(empty_dir, tokenizer, chat_template=False,
                                   max_seq_len=MAX_SEQ_LEN)
  with pytest.raises(FileNotFoundError, match='missing_round'):
    input_pipeline.tokenize_source(tmp_path / 'missing_round', tokenizer,
                                   chat_template=False,
                                   max_seq_len=MAX_SEQ_LEN)
  no_completion = write_tfds_dataset(_records(2), tmp_path / 'prompts_only',
                                     features=('prompt',))
  with pytest.raises(ValueError, match=r"prompts_only.*'completion'"):
    input_pipeline.tokenize_source(no_completion, tokenizer,
                                   chat_template=False,
                                   max_seq_len=MAX_SEQ_LEN)
  with pytest.raises(ValueError, match=r"example 1 lacks feature 'prompt'"):
    input_pipeline.tokenize_source(
        [{'prompt': 'a', 'completion': 'b'}, {'completion': 'b'}], tokenizer,
        chat_template=False, max_seq_len=MAX_SEQ_LEN)
  with pytest.raises(ValueError, match='empty'):
    input_pipeline.tokenize_source([], tokenizer, chat_template=False,
                                   max_seq_len=MAX_SEQ_LEN)
  with pytest.raises(ValueError, match='too_long'):
    input_pipeline.tokenize_source(_records(2), tokenizer, chat_template=False,
                                   max_seq_len=MAX_SEQ_LEN, too_long='wrap')
  source = input_pipeline.tokenize_source(_records(4), tokenizer,
                                          chat_template=False,
                                          max_seq_len=MAX_SEQ_LEN)
  with pytest.raises(ValueError, match='mixture_weights'):
    input_pipeline.InputPipeline([source], batch_size=2,
                                 max_seq_len=MAX_SEQ_LEN, seed=0,
                                 mixture_weights=(1.0, 2.0))


def test_too_long_examples_are_dropped_truncated_or_refused(tokenizer):
  records = _records(10)
  full = input_pipeline.tokenize_source(records, tokenizer,
                                        chat_template=False, max_seq_len=1000)
  limit = int(np.median(full.lengths))
  longer = int((full.lengths > limit).sum())
  assert 0 < longer < len(records)
  dropped = input_pipeline.tokenize_source(
      records, tokenizer, chat_template=False, max_seq_len=limit)
  assert len(dropped) == len(records) - longer
  assert dropped.num_dropped == longer
  assert dropped.lengths.max() <= limit
  truncated = input_pipeline.tokenize_source(
      records, tokenizer, chat_template=False, max_seq_len=limit,
      too_long='truncate')
  assert len(truncated) == len(records)
  assert truncated.lengths.max() == limit
  with pytest.raises(ValueError, match=r'example \d+ has \d+ tokens.*'
                     r'max_seq_len'):
    input_pipeline.tokenize_source(records, tokenizer, chat_template=False,
                                   max_seq_len=limit, too_long='error')


@pytest.mark.parametrize('packing', [True, False])
def test_order_is_seeded_and_resumes_from_state(tokenizer, packing):
  sources = [_records(30), _records(11, offset=100)]
  kwargs = dict(packing=packing, mixture_weights=(2.0, 1.0),
                bucket_window=3, pad_to_multiple=8)
  first = _pipeline(sources, tokenizer, **kwargs)
  batches = [first.next_batch() for _ in range(9)]
  again = _pipeline(sources, tokenizer, **kwargs)
  for batch in batches:
    for key, value in again.next_batch().items():
      np.testing.assert_array_equal(value, batch[key])
  other_seed = _pipeline(sources, tokenizer, **{**kwargs, 'seed': 1})
  assert any(not np.array_equal(other_seed.next_batch()['inputs'],
                                batch['inputs']) for batch in batches[:3])

  # The state after 4 batches, through JSON, continues the same stream.
  replay = _pipeline(sources, tokenizer, **kwargs)
  for _ in range(4):
    replay.next_batch()
  state = json.loads(json.dumps(replay.state))
  resumed = _pipeline(sources, tokenizer, **kwargs)
  resumed.restore(state)
  for batch in batches[4:]:
    for key, value in resumed.next_batch().items():
      np.testing.assert_array_equal(value, batch[key])
  if not packing:
    lengths = {b['inputs'].shape[1] for b in batches}
    assert all(length % 8 == 0 or length == MAX_SEQ_LEN for length in lengths)


def test_packing_fills_rows_and_mixture_follows_weights(tokenizer):
  small, large = _records(7), _records(40, offset=50)
  pipeline = _pipeline([small, large], tokenizer, mixture_weights=(1.0, 3.0))
  taken_before = 0
  for _ in range(6):
    batch = pipeline.next_batch()
    assert batch['inputs'].shape == (4, MAX_SEQ_LEN)
    # First-fit packing puts several examples in a row.
    assert batch['segment_ids'].max() >= 2
    taken = sum(pipeline.state['counts'])
    assert taken > taken_before
    taken_before = taken
  counts = pipeline.state['counts']
  # The deficit rule keeps every prefix within one example of its share.
  assert abs(counts[0] - sum(counts) / 4) <= 1
  # Each epoch of a source is a permutation: 7 examples, each seen once per
  # epoch of the small source.
  assert counts[0] >= 7


def test_epochs_count_batches(tokenizer):
  pipeline = _pipeline([_records(25)], tokenizer)
  one_epoch = pipeline.batches_for_examples(25)
  drawn, batches = 0, 0
  while drawn < 25:
    pipeline.next_batch()
    batches += 1
    drawn = sum(pipeline.state['counts'])
  assert one_epoch == batches
  config = config_lib.base_config()
  config.train = train.default_config()
  config.train.num_epochs = 2.0
  assert train.num_train_steps(config.train, pipeline) >= 2 * one_epoch - 1


def test_packed_example_sees_only_itself(tokenizer):
  """Logits of an example packed with others equal its logits alone."""
  config = config_lib.base_config()
  config.model.param_dtype = config.model.compute_dtype = 'float32'
  config.model.vocab_size = tokenizer.vocab_size
  model = models.build_model(config.model)
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32),
      model.abstract_params())
  source = input_pipeline.tokenize_source(
      _records(12), tokenizer, chat_template=False, max_seq_len=80)
  packed = input_pipeline.InputPipeline([source], batch_size=1,
                                        max_seq_len=80, seed=0).next_batch()
  segment_ids = packed['segment_ids'][0]
  assert segment_ids.max() >= 3
  packed_logits = np.asarray(train.forward(model, params, packed))[0]
  for segment in range(1, segment_ids.max() + 1):
    where = segment_ids == segment
    # The same example alone, at the start of an otherwise empty row.
    alone = {k: np.zeros_like(v) for k, v in packed.items()}
    n = int(where.sum())
    for key in ('inputs', 'targets', 'loss_mask', 'positions'):
      alone[key][0, :n] = packed[key][0][where]
    alone['segment_ids'][0, :n] = 1
    alone_logits = np.asarray(train.forward(model, params, alone))[0, :n]
    np.testing.assert_allclose(packed_logits[where], alone_logits,
                               rtol=2e-5, atol=2e-5)
  # Without the segment mask, later examples would see earlier ones.
  leaky = dict(packed, segment_ids=np.where(segment_ids > 0, 1, 0)[None])
  leaky_logits = np.asarray(train.forward(model, params, leaky))[0]
  assert not np.allclose(leaky_logits[segment_ids == 2],
                         packed_logits[segment_ids == 2], atol=1e-3)


def test_evaluation_batches_hold_every_example_once_in_order(tokenizer):
  source = input_pipeline.tokenize_source(
      _records(23), tokenizer, chat_template=False, max_seq_len=MAX_SEQ_LEN)
  batches = input_pipeline.evaluation_batches(source, batch_size=2,
                                              max_seq_len=MAX_SEQ_LEN)
  assert len(batches) > 2  # More than one batch, rows with several examples.
  found = []
  for batch in batches:
    assert batch['inputs'].shape == (2, MAX_SEQ_LEN)
    for row in range(2):
      segments = batch['segment_ids'][row]
      for segment in range(1, segments.max() + 1):
        at = segments == segment
        found.append((list(batch['inputs'][row][at]) +
                      [batch['targets'][row][at][-1]],
                      int(batch['loss_mask'][row][at].sum())))
  assert [ids for ids, _ in found] == [list(ids) for ids in source.token_ids]
  # The loss counts each example's completion (and terminator) tokens.
  assert [n for _, n in found] == [
      len(ids) - length for ids, length in zip(source.token_ids,
                                               source.prompt_lengths)]
  assert sum(int(b['loss_mask'].sum()) for b in batches) == sum(
      n for _, n in found)
