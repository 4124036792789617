"""SentencePiece: train one on a corpus, load any .model (local or gs://).

Our tokenizers reserve pad=0, eos=1, bos=2, unk=3, keep text byte-exact
(identity normalisation, whitespace kept: indentation is meaning in code) and
fall back to bytes, so nothing decodes to <unk>. A loaded model may use other
ids; the pipeline asks the model, and pads with 0 whatever id 0 is (padding
is masked out of the loss).
"""

import io
from collections.abc import Iterable, Iterator

import numpy as np
import sentencepiece as spm
from etils import epath

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
_CHUNK_CHARS = 4000  # SentencePiece drops "sentences" above max_sentence_length


class Tokenizer:
  """A SentencePiece model that pickles as its bytes (Grain workers get a copy)."""

  def __init__(self, model_proto: bytes, path: str = ""):
    self.model_proto, self.path = model_proto, path
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)

  def __getstate__(self):
    return {"model_proto": self.model_proto, "path": self.path}

  def __setstate__(self, state):
    self.__init__(**state)

  @property
  def vocab_size(self) -> int:
    return self._sp.vocab_size()

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    # One thread per call: Grain already runs several calls at once.
    return self._sp.encode(texts, num_threads=1)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def __repr__(self):
    return f"Tokenizer({self.path or 'in memory'}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str, flag: str = "data.tokenizer") -> Tokenizer:
  """Loads a SentencePiece .model from a local or gs:// path (given as `flag`)."""
  try:
    model_proto = epath.Path(path).read_bytes()
  except (FileNotFoundError, IsADirectoryError) as error:
    default = ", or \"\" for the default trained beside the data" if flag == "data.tokenizer" else ""
    raise ValueError(f"{flag}={path!r}: no such SentencePiece .model file "
                     f"({error}); give an existing path{default}.") from error
  try:
    return Tokenizer(model_proto, path)
  except RuntimeError as error:
    raise ValueError(f"{flag}={path!r} is not a SentencePiece model ({error}).") from error


def check_vocab(tokenizer: Tokenizer, vocab_size: int):
  """The model's embedding must have exactly the tokenizer's vocabulary."""
  if tokenizer.vocab_size != vocab_size:
    raise ValueError(
        f"model.vocab_size={vocab_size} does not match the tokenizer's vocabulary "
        f"of {tokenizer.vocab_size} ({tokenizer.path or 'in memory'}); set "
        f"model.vocab_size={tokenizer.vocab_size} or use a tokenizer trained with "
        f"vocab_size={vocab_size}.")


def _chunks(texts: Iterable[str], max_chars: int) -> Iterator[str]:
  """Documents cut at line ends into pieces SentencePiece keeps whole."""
  total = 0
  for text in texts:
    piece, size = [], 0
    for line in text.splitlines(keepends=True):
      piece.append(line)
      size += len(line)
      if size >= _CHUNK_CHARS:
        yield "".join(piece)
        piece, size = [], 0
    if piece:
      yield "".join(piece)
    total += len(text)
    if total >= max_chars:
      return


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_type: str = "bpe",
                    max_chars: int = 200_000_000, num_threads: int = 2) -> Tokenizer:
  """Trains a SentencePiece model on the first `max_chars` characters of `texts`."""
  if vocab_size < 260:
    raise ValueError(f"vocab_size={vocab_size} must be >= 260: the 256 byte-fallback "
                     "pieces and the 4 special ids come first.")
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_chunks(texts, max_chars), model_writer=model,
        vocab_size=vocab_size, model_type=model_type, byte_fallback=True,
        pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, split_digits=True,
        max_sentence_length=4 * _CHUNK_CHARS + 16, num_threads=num_threads,
        input_sentence_size=2_000_000, shuffle_input_sentence=True, minloglevel=2)
  except RuntimeError as error:  # e.g. a vocabulary larger than the corpus allows
    raise ValueError(f"training a {model_type} tokenizer with vocab_size="
                     f"{vocab_size} failed: {error}") from error
  return Tokenizer(model.getvalue())


def save_tokenizer(tokenizer: Tokenizer, path: str):
  """Writes the .model (local or gs://); `tokenizer.path` becomes `path`."""
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_bytes(tokenizer.model_proto)
  tokenizer.path = path


def document_ids(tokenizer: Tokenizer, ids: list[int]) -> np.ndarray:
  """One document as the pipeline packs it: BOS + ids + EOS, int32 (a model
  without BOS or EOS, id -1, gets none)."""
  bos = [tokenizer.bos_id] if tokenizer.bos_id >= 0 else []
  eos = [tokenizer.eos_id] if tokenizer.eos_id >= 0 else []
  return np.asarray([*bos, *ids, *eos], np.int32)
