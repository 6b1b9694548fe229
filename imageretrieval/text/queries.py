"""What words a product is known by, and the checks a typed query gets."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

MAX_QUERY_CHARS = 200  # longer text is refused: no product name is that long


class QueryTextError(ValueError):
    """An empty, too long or unreadable text query; the message says which."""


def check_query(text: str | bytes | None) -> str:
    """The query, trimmed, with whitespace collapsed; QueryTextError when it cannot be searched."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise QueryTextError("the text query is not UTF-8") from None
    text = " ".join((text or "").split())
    if not text:
        raise QueryTextError("the text query is empty: type a few words, e.g. 'red dress'")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryTextError(f"the text query is {len(text)} characters long; at most {MAX_QUERY_CHARS}")
    if any(unicodedata.category(ch) == "Cs" for ch in text) or "\ufffd" in text:
        # lone surrogates (undecodable bytes on a command line), U+FFFD (bytes a form parser replaced)
        raise QueryTextError("the text query is not UTF-8")
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise QueryTextError("the text query contains control characters")
    return text


def gender_word(gender: str) -> str:
    return {"Men": "men's", "Women": "women's", "Boys": "boys'", "Girls": "girls'", "Unisex": "unisex"}.get(gender, "")


def attribute_phrase(fields: Mapping[str, object]) -> str:
    """A templated phrase of a product's attributes, e.g. "women's blue casual dresses"."""
    parts = [gender_word(str(fields.get("gender") or "")), str(fields.get("baseColour") or ""),
             str(fields.get("usage") or ""), str(fields.get("articleType") or "")]
    return " ".join(p for p in parts if p).lower()


def product_texts(fields: Mapping[str, object]) -> list[str]:
    """The texts a product is trained on: its name and its attribute phrase."""
    name = str(fields.get("productDisplayName") or "").strip()
    phrase = attribute_phrase(fields)
    return [t for t in (name, phrase) if t]


def lexical_text(fields: Mapping[str, object]) -> str:
    """What BM25 indexes: the name and every attribute (brand names live in the name)."""
    keys = ("productDisplayName", "articleType", "subCategory", "masterCategory", "baseColour", "gender", "usage",
            "season")
    return " ".join(str(fields.get(k) or "") for k in keys)


_WORD = re.compile(r"[a-z0-9]+")
# letters NFKD does not split into a base letter and an accent
_UNDECOMPOSED = str.maketrans({"\u00df": "ss", "\u00f8": "o", "\u0153": "oe", "\u00e6": "ae", "\u0111": "d",
                               "\u0142": "l", "\u00f0": "d", "\u00fe": "th", "\u0131": "i"})


def _singular(w: str) -> str:
    """A light plural fold, the same on both sides: dresses = dress, accessories = accessory, hoodie = hoody."""
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("ie"):
        return w[:-2] + "y"
    if len(w) > 4 and w.endswith("es") and w[:-2].endswith(("ss", "x", "ch", "sh", "zz")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def tokens(text: str) -> list[str]:
    """Lower-case words without accents, plurals folded ("tshirts" = "tshirt", "dresses" = "dress"),
    "t shirt" joined as "tshirt"."""
    text = unicodedata.normalize("NFKD", text.lower()).replace("'", "").replace("\u2019", "")  # men's = mens
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).translate(_UNDECOMPOSED)  # estée = estee
    words = _WORD.findall(text)
    out: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w == "t" and i + 1 < len(words) and words[i + 1].startswith("shirt"):
            w, i = "t" + words[i + 1], i + 1
        out.append(_singular(w))
        i += 1
    return out
