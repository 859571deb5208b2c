"""Tokenizer: Gemma2's special ids, chat template, clear errors."""

import pathlib

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
