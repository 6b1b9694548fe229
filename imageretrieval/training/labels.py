"""Label encodings shared by every dataset: articleType (the seed's DeepFashion run failed without one
encoding), baseColour and gender (a shopper's other two questions)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..deepfashion import category_mapping


def deepfashion_article_types() -> set[str]:
    """The articleTypes DeepFashion categories map to (from the packaged mapping CSV)."""
    return {a for a in category_mapping()["articleType"] if a}


@dataclass(frozen=True)
class LabelEncoding:
    """Sorted class names -> contiguous ints; unknown names encode to -1."""

    classes: tuple[str, ...]

    @classmethod
    def shared(cls, catalog_article_types: Iterable[str]) -> LabelEncoding:
        """The union of the catalog selection's and DeepFashion's articleTypes, sorted.

        It does not depend on which dataset is trained on, so a model trained on `fashion`,
        `deepfashion` or `both` labels "Jeans" with the same integer.
        """
        return cls(tuple(sorted({a for a in catalog_article_types if a} | deepfashion_article_types())))

    def encode(self, names: Iterable[str]) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index.get(n, -1) for n in names], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.classes)


# Unisex is left out (-1): it agrees with both genders, so it must not be pushed away from either.
GENDERS = ("Boys", "Girls", "Men", "Women")


def gender_encoding() -> LabelEncoding:
    """The catalog's genders; a DeepFashion photo's MEN/WOMEN folder maps onto Men/Women."""
    return LabelEncoding(GENDERS)


def colour_encoding(catalog_colours: Iterable[str]) -> LabelEncoding:
    """The catalog's baseColours, sorted (DeepFashion photos have none: they encode to -1)."""
    return LabelEncoding(tuple(sorted({c for c in catalog_colours if isinstance(c, str) and c and c != "nan"})))
