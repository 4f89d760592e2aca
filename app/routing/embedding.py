"""Sentence embeddings from wordllama's bundled static token vectors, offline and bounded.

wordllama's wheel carries a Llama-2 BPE tokenizer (32,000 tokens) and a 16 MB table of token vectors
(``l2_supercat``, 256 dimensions, Matryoshka-trained so a prefix of the dimensions is itself an
embedding). A sentence embedding is the mean of its tokens' vectors. Nothing is downloaded: the files
are read from the installed package (wordllama's own ``load()`` looks for the tokenizer in the wrong
directory and then tries the network, so it is not used).

Tokenising is the expensive part (the ``tokenizers`` library costs ~1 µs a token plus ~3 µs a call).
Text is split on whitespace (C speed) and each word's token ids are memoised in a bounded dict: the
ids of a word are those of ``"▁" + word``, exactly what the BPE produces for a space-separated word
in running text. A memo hit returns exactly what a fresh tokenisation would, so the memo never
changes a result, only its cost.

Only the tokenizer is needed at request time: a linear model over the mean embedding is the mean of
per-token scores, so training folds the embedding table into a small per-token score table
(``app.routing.model``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

WORDLLAMA_CONFIG = "l2_supercat"
WORDLLAMA_DIM = 256
WORD_MEMO_SIZE = 200_000  # distinct words whose ids are kept (~30 MB at most)
MAX_WORD_CHARS = 24  # longer "words" (CJK runs, URLs, base64) are cut into pieces of this size
MAX_TOKENS = 512  # per embedded window


def wordllama_dir() -> Path:
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the wordllama package is not installed (pip install wordllama)")
    return Path(next(iter(spec.submodule_search_locations)))


def wordllama_version() -> str:
    from importlib.metadata import version

    return version("wordllama")


def load_embedding_table(dims: int) -> np.ndarray:
    """The first ``dims`` dimensions of every token's vector (training only), float32."""
    from safetensors import safe_open

    path = wordllama_dir() / "weights" / f"{WORDLLAMA_CONFIG}_{WORDLLAMA_DIM}.safetensors"
    with safe_open(str(path), framework="np", device="cpu") as f:
        table = f.get_tensor("embedding.weight")
    return np.ascontiguousarray(table[:, :dims], dtype=np.float32)


class TokenIds:
    """Text → the BPE token ids of its words (a bounded window of them), memoised per word.

    ``flag`` (optional) gives each distinct word an integer read once per word and memoised with its
    ids (``app.routing.features`` uses it for stem groups); ``read`` returns the ids and those
    integers summed per bit, in one pass over the words."""

    def __init__(self, flag: Callable[[str], int] | None = None, groups: int = 0) -> None:
        from tokenizers import Tokenizer

        path = wordllama_dir() / "tokenizers" / f"{WORDLLAMA_CONFIG}_tokenizer_config.json"
        self._tokenizer = Tokenizer.from_file(str(path))
        self._memo: dict[str, tuple[tuple[int, ...], int]] = {}
        self._flag = flag
        self._groups = groups

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size())

    def _word(self, word: str) -> tuple[tuple[int, ...], int]:
        entry = self._memo.get(word)
        if entry is None:
            if len(self._memo) >= WORD_MEMO_SIZE:
                self._memo.clear()  # rare; cheaper and simpler than LRU bookkeeping per lookup
            ids = tuple(self._tokenizer.encode(word, add_special_tokens=False).ids)
            entry = (ids, self._flag(word.lower()) if self._flag is not None else 0)
            self._memo[word] = entry
        return entry

    def read(self, text: str) -> tuple[list[int], list[int]]:
        """(token ids, at most ``MAX_TOKENS``; per flag bit, how many words had it)."""
        memo = self._memo
        out: list[int] = []
        extend = out.extend
        counts = [0] * self._groups
        for word in text.split():
            if len(word) > MAX_WORD_CHARS:  # rare: cut into pieces (at most four)
                pieces = [word[i : i + MAX_WORD_CHARS] for i in range(0, 4 * MAX_WORD_CHARS, MAX_WORD_CHARS)]
            else:
                pieces = [word]
            for piece in pieces:
                if not piece:
                    break
                entry = memo.get(piece)
                if entry is None:
                    entry = self._word(piece)
                extend(entry[0])
                flag = entry[1]
                if flag:
                    for bit in range(self._groups):
                        if flag >> bit & 1:
                            counts[bit] += 1
            if len(out) >= MAX_TOKENS:
                return out[:MAX_TOKENS], counts
        return out, counts

    def ids(self, text: str) -> list[int]:
        return self.read(text)[0]
