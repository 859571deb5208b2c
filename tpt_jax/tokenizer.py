"""Tokenizers: Gemma2's sentencepiece and Hugging Face `tokenizer.json`.

Two kinds, one interface (`encode(text, add_bos=False)`, `decode(ids)`,
`vocab_size`):

* Gemma2's sentencepiece model: the `gemma` library's
  `gm.text.Gemma2Tokenizer` (so it plugs into `gm.text.Sampler` as well),
  loaded from a local path and checked to have Gemma2's special ids.
  `train_sentencepiece` builds a small model with the same special ids, for
  tests and the CPU demo (no download).
* A Hugging Face `tokenizer.json` (Llama-3, GPT-2, ...), read with the
  `tokenizers` library into `HFTokenizer`.

Each family has its own special tokens and chat template (`SpecialTokens`:
Gemma2's `<start_of_turn>`, Llama-3's `<|start_header_id|>` headers and
`<|eot_id|>`, GPT-2's lone `<|endoftext|>` and no template);
`special_tokens(tokenizer)` finds them from the vocabulary, and
`encode_prompt` / `terminator_id` / `eos_token_ids` use them.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
from typing import Iterable, Sequence

import ml_collections
import sentencepiece as spm
import tokenizers

from tpt_jax import _gemma_compat  # pylint: disable=unused-import
from gemma import gm  # pylint: disable=g-bad-import-order

SentencePieceTokenizer = gm.text.Gemma2Tokenizer

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
LLAMA3_CHAT_TEMPLATE = ('<|start_header_id|>user<|end_header_id|>\n\n'
                        '{prompt}<|eot_id|>'
                        '<|start_header_id|>assistant<|end_header_id|>\n\n')
# Files a checkpoint directory may hold, in order of preference.
# (Gemma2 directories hold both; its sentencepiece model is the one the
# sampler's stop strings and `gm.text.Sampler` know.)
TOKENIZER_FILES = ('tokenizer.model', 'tokenizer.json')


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """A family's special tokens and chat template.

  Attributes:
    family: 'gemma2', 'llama3' or 'gpt2'.
    bos_id: prepended to every prompt (None: nothing is prepended).
    eos_id: ends a plain completion.
    end_of_turn_id: ends a chat turn (None: the family has no chat format).
    chat_template: the prompt's text with `{prompt}`, or None.
  """
  family: str
  bos_id: int | None
  eos_id: int
  end_of_turn_id: int | None
  chat_template: str | None


GEMMA2_SPECIAL_TOKENS = SpecialTokens(
    family='gemma2', bos_id=BOS_ID, eos_id=EOS_ID,
    end_of_turn_id=END_OF_TURN_ID, chat_template=CHAT_TEMPLATE)


class HFTokenizer:
  """A Hugging Face `tokenizer.json`, with our tokenizer interface.

  `encode` adds no special tokens (the tokenizer's post-processor is not
  applied: BOS is ours to add, as for sentencepiece); `decode` drops them.
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer, path: str = ''):
    self._tokenizer = tokenizer
    self.path = path

  @property
  def vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    ids = self._tokenizer.encode(text, add_special_tokens=False).ids
    if add_bos:
      bos = special_tokens(self).bos_id
      ids = ([] if bos is None else [bos]) + ids
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    return self._tokenizer.decode([int(i) for i in ids],
                                  skip_special_tokens=True)

  def token_to_id(self, token: str) -> int | None:
    return self._tokenizer.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self._tokenizer.id_to_token(int(token_id))

  def token_bytes(self) -> list[bytes]:
    """The bytes each token id contributes to a decoded string (special
    tokens none), as `sampling_utils.sentencepiece_token_bytes` gives them
    for sentencepiece: what stop strings are matched against."""
    special = {t.content for t in
               self._tokenizer.get_added_tokens_decoder().values()
               if t.special}
    byte_level = _is_byte_level(self._tokenizer)
    unicode_to_byte = {c: b for b, c in _bytes_to_unicode().items()}
    result = []
    for token_id in range(self.vocab_size):
      piece = self._tokenizer.id_to_token(token_id)
      if piece is None or piece in special:
        result.append(b'')
      elif byte_level:
        result.append(bytes(unicode_to_byte[c] for c in piece))
      elif piece.startswith('<0x') and piece.endswith('>') and len(piece) == 6:
        result.append(bytes([int(piece[3:-1], 16)]))
      else:
        result.append(piece.replace('\u2581', ' ').encode('utf-8'))
    return result


def _is_byte_level(tokenizer: tokenizers.Tokenizer) -> bool:
  """Whether tokens are GPT-2 style byte-level strings (Llama-3, GPT-2)."""
  return isinstance(tokenizer.decoder, tokenizers.decoders.ByteLevel)


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character table of byte-level BPE."""
  printable = (list(range(ord('!'), ord('~') + 1)) +
               list(range(ord('\xa1'), ord('\xac') + 1)) +
               list(range(ord('\xae'), ord('\xff') + 1)))
  table, extra = {}, 0
  for byte in range(256):
    if byte in printable:
      table[byte] = chr(byte)
    else:
      table[byte] = chr(256 + extra)
      extra += 1
  return table


Tokenizer = SentencePieceTokenizer | HFTokenizer


def special_tokens(tokenizer: Tokenizer) -> SpecialTokens:
  """The special tokens of the tokenizer's family, found by their pieces."""
  if not isinstance(tokenizer, HFTokenizer):
    return GEMMA2_SPECIAL_TOKENS
  ids = tokenizer.token_to_id
  if ids('<|begin_of_text|>') is not None and ids('<|eot_id|>') is not None:
    return SpecialTokens(
        family='llama3', bos_id=ids('<|begin_of_text|>'),
        eos_id=ids('<|end_of_text|>'), end_of_turn_id=ids('<|eot_id|>'),
        chat_template=LLAMA3_CHAT_TEMPLATE)
  if ids('<|endoftext|>') is not None:
    return SpecialTokens(family='gpt2', bos_id=None,
                         eos_id=ids('<|endoftext|>'), end_of_turn_id=None,
                         chat_template=None)
  if ids('<bos>') is not None and ids('<start_of_turn>') is not None:
    return SpecialTokens(
        family='gemma2', bos_id=ids('<bos>'), eos_id=ids('<eos>'),
        end_of_turn_id=ids('<end_of_turn>'), chat_template=CHAT_TEMPLATE)
  raise ValueError(
      f'Tokenizer {tokenizer.path!r} has none of the special tokens we know '
      "(Llama-3's <|begin_of_text|> and <|eot_id|>, GPT-2's <|endoftext|>, "
      "Gemma2's <bos> and <start_of_turn>).")


def format_prompt(prompt: str, *, chat_template: bool,
                  special: SpecialTokens = GEMMA2_SPECIAL_TOKENS) -> str:
  """The text the model sees: the prompt, in the chat template if asked."""
  if not chat_template:
    return prompt
  if special.chat_template is None:
    raise ValueError(
        f'config.tokenizer.chat_template is on but the {special.family} '
        'tokenizer has no chat template; turn it off.')
  return special.chat_template.format(prompt=prompt)


def encode_prompt(tokenizer: Tokenizer, prompt: str, *,
                  chat_template: bool) -> list[int]:
  """Token ids of a prompt, starting with the family's BOS (if it has one)."""
  special = special_tokens(tokenizer)
  text = format_prompt(prompt, chat_template=chat_template, special=special)
  # gm's encode inserts BOS as an IntEnum, which sentencepiece can't decode.
  return [int(token_id) for token_id in tokenizer.encode(text, add_bos=True)]


def terminator_id(tokenizer: Tokenizer, *, chat_template: bool) -> int:
  """The token that ends a training completion: end of turn in the chat
  format, else EOS."""
  special = special_tokens(tokenizer)
  if chat_template and special.end_of_turn_id is not None:
    return special.end_of_turn_id
  return special.eos_id


def eos_token_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
  """Tokens that end a sampled trace (EOS and end of turn)."""
  special = special_tokens(tokenizer)
  return tuple(i for i in (special.eos_id, special.end_of_turn_id)
               if i is not None)


def load_hf_tokenizer(path: str | os.PathLike[str]) -> HFTokenizer:
  """Loads a Hugging Face `tokenizer.json` and checks its family's tokens."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'Tokenizer file {str(path)!r} does not exist.')
  try:
    tokenizer = HFTokenizer(tokenizers.Tokenizer.from_file(str(path)),
                            path=str(path))
  except Exception as e:  # tokenizers raises its own Exception type.
    raise ValueError(f'Tokenizer file {str(path)!r} is not a Hugging Face '
                     f'tokenizer.json: {e}') from e
  special_tokens(tokenizer)  # Raises if the family is unknown.
  return tokenizer


def find_tokenizer_file(directory: str | os.PathLike[str]) -> pathlib.Path:
  """The tokenizer a checkpoint directory holds (`TOKENIZER_FILES`)."""
  directory = pathlib.Path(directory)
  for name in TOKENIZER_FILES:
    if (directory / name).is_file():
      return directory / name
  raise FileNotFoundError(
      f'Checkpoint directory {str(directory)!r} holds no tokenizer (none of '
      f'{TOKENIZER_FILES}); set config.tokenizer.path.')


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
  """Loads a tokenizer: a `tokenizer.json`, a sentencepiece model (checked
  to have Gemma2's special ids), or the one a directory holds.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: the file is not a tokenizer, or a sentencepiece special id
      holds another piece (the message names both).
  """
  path = pathlib.Path(path)
  if path.is_dir():
    path = find_tokenizer_file(path)
  if path.suffix == '.json':
    return load_hf_tokenizer(path)
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
  return SentencePieceTokenizer(path=str(path))


def tokenizer_from_config(tokenizer_config: ml_collections.ConfigDict,
                          checkpoint_path: str | None = None) -> Tokenizer:
  """Loads `config.tokenizer.path`, else the checkpoint directory's."""
  if tokenizer_config.path:
    return load_tokenizer(tokenizer_config.path)
  if checkpoint_path and pathlib.Path(checkpoint_path).is_dir():
    return load_tokenizer(find_tokenizer_file(checkpoint_path))
  raise ValueError(
      'config.tokenizer.path is not set and there is no checkpoint directory '
      'to read one from: point it at a `tokenizer.json` or a sentencepiece '
      '`.model` file (Gemma2\'s `tokenizer.model`).')


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
