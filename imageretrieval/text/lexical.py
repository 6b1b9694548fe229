"""BM25 over product names and attributes, rows appended as the catalog grows (Robertson & Zaragoza)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .queries import tokens

BM25_K1 = 1.2
BM25_B = 0.75


class LexicalIndex:
    """Inverted index over document rows 0..n-1; `extend` appends rows (the live catalog's new rows).

    Thread-safe: a search reads a term's postings whole, before or after a concurrent `extend`.
    """

    def __init__(self) -> None:
        self._postings: dict[str, tuple[list[int], list[int]]] = {}  # term -> (rows, term counts)
        self._frozen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.lengths: list[int] = []
        self._lock = threading.Lock()

    @property
    def n(self) -> int:
        return len(self.lengths)

    def extend(self, texts: Sequence[str]) -> None:
        documents = [Counter(tokens(text)) for text in texts]  # tokenized outside the lock
        with self._lock:
            for words in documents:
                row = len(self.lengths)
                for term, count in words.items():
                    rows, counts = self._postings.setdefault(term, ([], []))
                    rows.append(row)
                    counts.append(count)
                    self._frozen.pop(term, None)
                self.lengths.append(sum(words.values()))  # last: a row is counted once its postings are in

    def _arrays(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        with self._lock:
            if term not in self._postings:
                return None
            if term not in self._frozen:
                rows, counts = self._postings[term]
                self._frozen[term] = (np.array(rows, np.int64), np.array(counts, np.float32))
            return self._frozen[term]

    def scores(self, query: str, n: int, allowed: np.ndarray | None = None) -> np.ndarray:
        """BM25 score of each of the first `n` rows (0 where no query word occurs); `allowed` masks rows."""
        out = np.zeros(n, np.float32)
        lengths = np.asarray(self.lengths[:n], np.float32)
        if n == 0:
            return out
        avg = float(lengths.mean()) or 1.0
        for term in set(tokens(query)):
            arrays = self._arrays(term)
            if arrays is None:
                continue
            rows, counts = arrays
            keep = rows < n
            rows, counts = rows[keep], counts[keep]
            if len(rows) == 0:
                continue
            idf = np.log(1.0 + (n - len(rows) + 0.5) / (len(rows) + 0.5))
            norm = counts + BM25_K1 * (1 - BM25_B + BM25_B * lengths[rows] / avg)
            out[rows] += idf * counts * (BM25_K1 + 1) / norm
        if allowed is not None:
            out[~allowed[:n]] = 0.0
        return out

    def best_matches(self, query: str, n: int, allowed: np.ndarray | None = None) -> np.ndarray:
        """Mask of the first `n` rows that hold the most of the query's distinct words (none: all False).

        "red casual" asks for both: rows with both words where there are any, else rows with one.
        """
        matched = np.zeros(n, np.int32)
        for term in set(tokens(query)):
            arrays = self._arrays(term)
            if arrays is not None:
                rows = arrays[0]
                matched[rows[rows < n]] += 1
        if allowed is not None:
            matched[~allowed[:n]] = 0
        best = matched.max() if n else 0
        return matched == best if best > 0 else np.zeros(n, bool)

    def search(self, query: str, k: int, n: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows) with a positive score; ties by row."""
        scores = self.scores(query, n, allowed)
        hits = np.flatnonzero(scores > 0)
        if len(hits) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        order = hits[np.lexsort((hits, -scores[hits]))][:k]
        return scores[order], order
