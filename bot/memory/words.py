"""Word matching for the text read in pictures: how it is stored, and how a query is matched to it.

The store keeps each picture's text (OCR) as the Chroma *document* of its index entry, in a
normalised form (:func:`searchable_text`): NFKC-folded, case-folded, every run of non-word characters
a single space, with a space at both ends. Chroma's ``$contains`` is a case-sensitive substring test
(measured: 1.5.9, a few ms at 20k records), so searching for ``" connection refused "`` in that form
is a whole-word phrase match that ignores case and punctuation ("Error: Connection-refused!" matches).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_NON_WORD = re.compile(r"[\W_]+")
# Words too common to say anything about which picture is meant ("the screenshot with the error").
STOPWORDS = frozenset(
    "a an the and or but of to in on at for with from by is are was were be been it its this that these those "
    "i me my we our you your he she they them his her their what which who whom where when how why "
    "show find me picture pictures image images photo photos pic pics screenshot screenshots one says said "
    "text saying".split()
)


def _words(text: str) -> list[str]:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return [word for word in _NON_WORD.sub(" ", folded).split() if word]


def searchable_text(text: str) -> str:
    """The stored form of a picture's text: ``" word word … "`` ("" for a picture without text)."""
    words = _words(text)
    return f" {' '.join(words)} " if words else ""


@dataclass(frozen=True)
class WordQuery:
    """A /find query as word matching sees it."""

    # The query's words in order, in the stored form, from its first to its last term
    # ("the screenshot that says meeting moved to 5pm" → " meeting moved to 5pm ").
    phrase: str
    terms: tuple[str, ...]  # the words that say something (stopwords dropped), each once

    @classmethod
    def parse(cls, query: str) -> WordQuery | None:
        """None when the query has no word worth matching (only stopwords, or only punctuation)."""
        words = _words(query)
        terms = tuple(dict.fromkeys(word for word in words if word not in STOPWORDS))
        if not terms:
            return None
        # The phrase without the talk around it: "says connection refused" looks for "connection refused".
        kept = [i for i, word in enumerate(words) if word not in STOPWORDS]
        phrase = words[kept[0]:kept[-1] + 1]
        return cls(phrase=f" {' '.join(phrase)} ", terms=terms)

    @property
    def needles(self) -> list[str]:
        """What Chroma's ``$contains`` looks for: each term as a whole word."""
        return [f" {term} " for term in self.terms]

    def match(self, document: str) -> tuple[int, float]:
        """``(tier, share)`` for a stored text: ``share`` of the terms it contains, and ``tier`` 2 when
        it holds the whole query as a phrase, 1 when it holds every term, else 0. A one-word query is
        never tier 1 or 2: one word in a picture's text is a hint, not proof that it is the picture
        meant (a meme that says "dog" must not outrank every photo of a dog)."""
        found = sum(1 for needle in self.needles if needle in document)
        share = found / len(self.terms)
        if len(self.terms) < 2:
            return 0, share
        if self.phrase in document:
            return 2, share
        return (1 if found == len(self.terms) else 0), share
