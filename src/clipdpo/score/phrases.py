"""A caption's object phrases for the noun-level judge: spaCy's noun chunks, less those that name no object.

"a picture of a red cup on the left and two cats" -> ["a red cup", "two cats"]: "a picture" and "the left" are
headed by nouns of the picture or a place in it (JudgeConfig.not_objects), and a chunk headed by a pronoun
("it", "which") names nothing by itself.
"""

from __future__ import annotations

from clipdpo.config import ConfigError


def load_parser(spacy_model: str):
    """spaCy with its parser (noun chunks need it); a clear error when spaCy or the model is missing."""
    try:
        import spacy
    except ImportError:
        raise ConfigError(
            "score.judge.phrase_weight > 0 needs spaCy (pip install spacy) and a model with a parser"
        ) from None
    try:
        return spacy.load(spacy_model, exclude=["ner"])
    except OSError:
        raise ConfigError(
            f"score.judge.spacy_model: spaCy model {spacy_model!r} not found; give an installed package name or a "
            "model folder (with a parser: noun chunks need it)"
        ) from None


class ObjectPhrases:
    """Object phrases of texts with one spaCy model; `not_objects`: head lemmas that name no object."""

    def __init__(self, spacy_model: str, not_objects: list[str]):
        self._nlp = load_parser(spacy_model)
        self._skip = {word.lower() for word in not_objects}

    def of(self, texts: list[str]) -> list[list[str]]:
        """Each text's object phrases, in order, each once."""
        out = []
        for doc in self._nlp.pipe(texts, batch_size=256):
            kept = [
                chunk.text
                for chunk in doc.noun_chunks
                if chunk.root.pos_ != "PRON" and chunk.root.lemma_.lower() not in self._skip
            ]
            out.append(list(dict.fromkeys(kept)))
        return out
