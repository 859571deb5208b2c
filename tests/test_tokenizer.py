"""Tokenizers: Gemma2's sentencepiece (special ids, chat template) and
Hugging Face tokenizer.json (round trip, Llama-3 / GPT-2 special tokens)."""

import pathlib
import re

import ml_collections
import numpy as np
import pytest
import sentencepiece as spm

from tpt_jax import tokenizer as tokenizer_lib

_TEXTS = [
    'Tom has 3 apples and buys 5 more. 3 + 5 = 8. The answer is 8.',
    'A train travels 60 miles in 2 hours. 60 / 2 = 30 miles per hour.',
    'Question: what is 12 times 4?\nAnswer: 12 * 4 = 48',
] * 20


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp('tok') / 'tokenizer.model'
  return tokenizer_lib.train_sentencepiece(_TEXTS, path, vocab_size=512)


def test_special_ids_are_gemma2s(tokenizer):
  assert tokenizer.tokens[0] == '<pad>'
  assert tokenizer.tokens[1] == '<eos>'
  assert tokenizer.tokens[2] == '<bos>'
  assert tokenizer.tokens[106] == '<start_of_turn>'
  assert tokenizer.tokens[107] == '<end_of_turn>'
  # And the library's enum agrees (so gm.text.Sampler works with it).
  assert tokenizer.special_tokens.START_OF_TURN == 106
  assert tokenizer.special_tokens.END_OF_TURN == 107


def test_chat_template_round_trips_with_single_turn_tokens(tokenizer):
  ids = tokenizer_lib.encode_prompt(tokenizer, 'What is 3 + 5?',
                                    chat_template=True)
  assert ids[:2] == [tokenizer_lib.BOS_ID, tokenizer_lib.START_OF_TURN_ID]
  assert ids.count(tokenizer_lib.START_OF_TURN_ID) == 2
  assert ids.count(tokenizer_lib.END_OF_TURN_ID) == 1
  assert all(isinstance(i, int) and not hasattr(i, 'name') for i in ids)
  assert tokenizer.decode(ids[1:]) == (
      '<start_of_turn>user\nWhat is 3 + 5?<end_of_turn>\n'
      '<start_of_turn>model\n')


def test_plain_prompt_has_bos_and_no_template(tokenizer):
  ids = tokenizer_lib.encode_prompt(tokenizer, '12 + 4 =',
                                    chat_template=False)
  assert ids[0] == tokenizer_lib.BOS_ID
  assert tokenizer_lib.START_OF_TURN_ID not in ids
  assert tokenizer.decode(ids[1:]) == '12 + 4 ='


def test_unseen_characters_round_trip(tokenizer):
  text = 'Zoë paid €7 — why?'
  assert tokenizer.decode(tokenizer.encode(text)) == text


def test_too_small_vocab_is_refused(tmp_path):
  with pytest.raises(ValueError, match='vocab_size=300 leaves no room'):
    tokenizer_lib.train_sentencepiece(_TEXTS, tmp_path / 't.model',
                                      vocab_size=300)


def test_digits_are_single_tokens(tokenizer):
  pieces = tokenizer.split('12345')
  assert pieces == ['1', '2', '3', '4', '5']


def test_missing_file_is_named():
  with pytest.raises(FileNotFoundError, match='no/such/tokenizer.model'):
    tokenizer_lib.load_tokenizer('no/such/tokenizer.model')


def test_non_sentencepiece_file_is_named(tmp_path):
  bad = tmp_path / 'bad.model'
  bad.write_bytes(b'not a model')
  with pytest.raises(ValueError, match='bad.model.*not a sentencepiece'):
    tokenizer_lib.load_tokenizer(bad)


def test_wrong_special_ids_are_refused(tmp_path):
  """A plain sentencepiece model (unk 0, bos 1, eos 2) is not Gemma2's."""
  prefix = tmp_path / 'plain'
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_TEXTS), model_prefix=str(prefix),
      vocab_size=120, minloglevel=2, hard_vocab_limit=False)
  with pytest.raises(ValueError, match=r"at id 0; Gemma2 needs '<pad>'"):
    tokenizer_lib.load_tokenizer(pathlib.Path(f'{prefix}.model'))


# --- Hugging Face tokenizer.json ----------------------------------------------

_LLAMA3_SPECIALS = ['<|begin_of_text|>', '<|end_of_text|>',
                    '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>']


def _write_tokenizer_json(path, special_tokens):
  """A small byte-level BPE tokenizer.json (Llama-3 / GPT-2 style)."""
  from tokenizers import decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  import tokenizers  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=400, special_tokens=special_tokens, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(_TEXTS, trainer=trainer)
  path.mkdir(parents=True, exist_ok=True)
  tokenizer.save(str(path / 'tokenizer.json'))
  return path / 'tokenizer.json'


@pytest.fixture(scope='module')
def llama3_json(tmp_path_factory):
  return _write_tokenizer_json(tmp_path_factory.mktemp('llama3_tok'),
                               _LLAMA3_SPECIALS)


def _strings(count=100):
  """Words, digits, punctuation, whitespace runs and unseen characters."""
  rng = np.random.default_rng(0)
  alphabet = list('abcdefghij klmnop 0123456789 +-*/=.,?!\n\t') + [
      'é', '€', '—', '中', '🙂', '  ', 'apples', ' answer', 'Question:']
  return [''.join(rng.choice(alphabet, size=rng.integers(1, 40)))
          for _ in range(count)]


def test_tokenizer_json_round_trips_like_transformers(llama3_json):
  transformers = pytest.importorskip('transformers')
  ours = tokenizer_lib.load_tokenizer(llama3_json)
  reference = transformers.PreTrainedTokenizerFast(
      tokenizer_file=str(llama3_json))
  assert ours.vocab_size == len(reference)
  token_bytes = ours.token_bytes()
  for text in _strings():
    ids = ours.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False), text
    assert ours.decode(ids) == text
    assert reference.decode(ids) == text
    # What stop strings are matched against: the same bytes.
    assert b''.join(token_bytes[i] for i in ids) == text.encode('utf-8')


def test_llama3_chat_template_and_special_ids(llama3_json):
  tokenizer = tokenizer_lib.load_tokenizer(llama3_json)
  ids_of = {t: tokenizer.token_to_id(t) for t in _LLAMA3_SPECIALS}
  special = tokenizer_lib.special_tokens(tokenizer)
  assert special.family == 'llama3'
  ids = tokenizer_lib.encode_prompt(tokenizer, 'What is 3 + 5?',
                                    chat_template=True)
  assert ids[:2] == [ids_of['<|begin_of_text|>'],
                     ids_of['<|start_header_id|>']]
  assert ids.count(ids_of['<|start_header_id|>']) == 2
  assert ids.count(ids_of['<|eot_id|>']) == 1
  # Header tokens are single tokens, and the text in between is verbatim.
  user_end = ids.index(ids_of['<|end_header_id|>'])
  assert tokenizer.decode(ids[2:user_end]) == 'user'
  assert tokenizer.decode(ids) == 'user\n\nWhat is 3 + 5?assistant\n\n'
  assert tokenizer_lib.terminator_id(tokenizer, chat_template=True) == (
      ids_of['<|eot_id|>'])
  assert tokenizer_lib.terminator_id(tokenizer, chat_template=False) == (
      ids_of['<|end_of_text|>'])
  assert set(tokenizer_lib.eos_token_ids(tokenizer)) == {
      ids_of['<|end_of_text|>'], ids_of['<|eot_id|>']}
  plain = tokenizer_lib.encode_prompt(tokenizer, '12 + 4 =',
                                      chat_template=False)
  assert plain[0] == ids_of['<|begin_of_text|>']
  assert tokenizer.decode(plain) == '12 + 4 ='


def test_gpt2_tokenizer_has_no_bos_and_no_chat_template(tmp_path):
  path = _write_tokenizer_json(tmp_path, ['<|endoftext|>'])
  tokenizer = tokenizer_lib.load_tokenizer(path)
  ids = tokenizer_lib.encode_prompt(tokenizer, 'Question: 2 + 2? Answer:',
                                    chat_template=False)
  assert tokenizer.decode(ids) == 'Question: 2 + 2? Answer:'
  assert tokenizer.token_to_id('<|endoftext|>') not in ids
  assert tokenizer_lib.eos_token_ids(tokenizer) == (
      tokenizer.token_to_id('<|endoftext|>'),)
  with pytest.raises(ValueError, match='gpt2 tokenizer has no chat template'):
    tokenizer_lib.encode_prompt(tokenizer, 'x', chat_template=True)


def test_tokenizer_comes_from_the_checkpoint_directory(llama3_json, tmp_path):
  config = ml_collections.ConfigDict({'path': ''})
  tokenizer = tokenizer_lib.tokenizer_from_config(
      config, checkpoint_path=str(llama3_json.parent))
  assert isinstance(tokenizer, tokenizer_lib.HFTokenizer)
  assert tokenizer.path == str(llama3_json)
  with pytest.raises(FileNotFoundError, match=re.escape(
      f"{str(tmp_path)!r} holds no tokenizer")):
    tokenizer_lib.tokenizer_from_config(config, checkpoint_path=str(tmp_path))
  with pytest.raises(ValueError, match='no checkpoint directory'):
    tokenizer_lib.tokenizer_from_config(config)


def test_unknown_tokenizer_json_is_named(tmp_path):
  path = _write_tokenizer_json(tmp_path, ['<s>'])
  with pytest.raises(ValueError, match='none of the special tokens we know'):
    tokenizer_lib.load_tokenizer(path)
  (tmp_path / 'bad.json').write_text('{"not": "a tokenizer"}')
  with pytest.raises(ValueError, match='is not a Hugging Face tokenizer.json'):
    tokenizer_lib.load_tokenizer(tmp_path / 'bad.json')
