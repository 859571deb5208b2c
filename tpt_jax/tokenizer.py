"""Gemma2's sentencepiece tokenizer, its special tokens and chat template.

The tokenizer object is the `gemma` library's `gm.text.Gemma2Tokenizer`
(so it plugs into `gm.text.Sampler` as well), loaded from a local path and
checked to have Gemma2's special ids. `train_sentencepiece` builds a small
model with the same special ids, for tests and the CPU demo (no download).
"""

from __future__ import annotations

import io
import os
import pathlib
from typing import Iterable

import ml_collections
import sentencepiece as spm

from tpt_jax import _gemma_compat  # pylint: disable=unused-import
from gemma import gm  # pylint: disable=g-bad-import-order

Tokenizer = gm.text.Gemma2Tokenizer

PAD_ID = 0
EOS_ID = 1
BOS_ID = 2
UNK_ID = 3
START_OF_TURN_ID = 106
END_OF_TURN_ID = 107

# The pieces that must sit at these ids in any Gemma2-compatible vocabulary.
SPECIAL_PIECES = {
    PAD_ID: '<pad>',
    EOS_ID: '<eos>',
    BOS_ID: '<bos>',
    START_OF_TURN_ID: '<start_of_turn>',
    END_OF_TURN_ID: '<end_of_turn>',
}

# Gemma2 fills ids 4..105 with these; we reproduce them so 106/107 line up.
_GEMMA2_RESERVED_PIECES = (['<mask>', '<2mass>', '[@BOS@]'] +
                           [f'<unused{i}>' for i in range(99)])

CHAT_TEMPLATE = ('<start_of_turn>user\n{prompt}<end_of_turn>\n'
                 '<start_of_turn>model\n')


def format_prompt(prompt: str, *, chat_template: bool) -> str:
  """The text the model sees: the prompt, in the chat template if asked."""
  return CHAT_TEMPLATE.format(prompt=prompt) if chat_template else prompt


def encode_prompt(tokenizer: Tokenizer, prompt: str, *,
                  chat_template: bool) -> list[int]:
  """Token ids of a prompt, starting with BOS as Gemma2 was trained."""
  text = format_prompt(prompt, chat_template=chat_template)
  # gm's encode inserts BOS as an IntEnum, which sentencepiece can't decode.
  return [int(token_id) for token_id in tokenizer.encode(text, add_bos=True)]


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
  """Loads a sentencepiece model and checks it has Gemma2's special ids.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: the file is not a sentencepiece model, or a special id holds
      another piece (the message names both).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'Tokenizer file {str(path)!r} does not exist.')
  processor = spm.SentencePieceProcessor()
  try:
    processor.LoadFromSerializedProto(path.read_bytes())
  except Exception as e:  # sentencepiece raises RuntimeError/OSError.
    raise ValueError(
        f'Tokenizer file {str(path)!r} is not a sentencepiece model: {e}'
    ) from e
  for token_id, piece in SPECIAL_PIECES.items():
    if token_id >= processor.GetPieceSize():
      raise ValueError(
          f'Tokenizer {str(path)!r} has {processor.GetPieceSize()} pieces; '
          f'Gemma2 needs {piece!r} at id {token_id}.')
    if processor.IdToPiece(token_id) != piece:
      raise ValueError(
          f'Tokenizer {str(path)!r} has {processor.IdToPiece(token_id)!r} at '
          f'id {token_id}; Gemma2 needs {piece!r} there.')
  return Tokenizer(path=str(path))


def tokenizer_from_config(tokenizer_config: ml_collections.ConfigDict
                          ) -> Tokenizer:
  """Loads `config.tokenizer.path`."""
  if not tokenizer_config.path:
    raise ValueError(
        'config.tokenizer.path is not set: point it at a sentencepiece '
        '`.model` file (Gemma2\'s `tokenizer.model`).')
  return load_tokenizer(tokenizer_config.path)


def train_sentencepiece(texts: Iterable[str],
                        output_path: str | os.PathLike[str], *,
                        vocab_size: int,
                        seed_pieces: Iterable[str] = (),
                        byte_fallback: bool = True) -> Tokenizer:
  """Trains a small sentencepiece model with Gemma2's special ids.

  Args:
    texts: training sentences.
    output_path: where the `.model` file is written.
    vocab_size: total pieces, special and reserved ones included (> 108).
    seed_pieces: extra pieces that must be single tokens.
    byte_fallback: encode characters unseen in `texts` as UTF-8 bytes (256
      extra pieces), so every string round-trips instead of becoming <unk>.

  Returns:
    The loaded tokenizer.
  """
  user_symbols = (_GEMMA2_RESERVED_PIECES + list(SPECIAL_PIECES.values())[3:]
                  + list(seed_pieces))
  num_fixed = len(user_symbols) + 4 + (256 if byte_fallback else 0)
  if vocab_size <= num_fixed:
    raise ValueError(
        f'vocab_size={vocab_size} leaves no room for learned pieces next to '
        f'{num_fixed} special, reserved and byte pieces.')
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(texts)),
      model_writer=model,
      vocab_size=vocab_size,
      model_type='bpe',
      pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
      pad_piece='<pad>', eos_piece='<eos>', bos_piece='<bos>',
      unk_piece='<unk>',
      user_defined_symbols=user_symbols,
      split_digits=True,
      byte_fallback=byte_fallback,
      character_coverage=1.0,
      hard_vocab_limit=False,
      add_dummy_prefix=False,
      remove_extra_whitespaces=False,
      normalization_rule_name='identity',
      num_threads=1,
      minloglevel=2,
  )
  output_path = pathlib.Path(output_path)
  output_path.parent.mkdir(parents=True, exist_ok=True)
  tmp_path = output_path.with_suffix(output_path.suffix + '.tmp')
  tmp_path.write_bytes(model.getvalue())
  os.replace(tmp_path, output_path)
  return load_tokenizer(output_path)
