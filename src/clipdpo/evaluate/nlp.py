"""The NLP resources AMBER's official code uses, behind the small interface the scorer needs.

Official: nltk `word_tokenize` (punkt) + `pos_tag` (averaged perceptron) + `WordNetLemmatizer`
(WordNet 3.0), and spaCy `en_core_web_lg` vectors for word similarity. All are loaded from
paths the user gives (nltk data folder, spaCy model name or folder), never downloaded here.
`SpacyNLP` does the noun extraction with the spaCy model itself (tokenizer, PTB tagger, lemmatizer)
for places without the nltk data. `description` names what produced the numbers; the report
prints it, because another model (md/sm) or tagger changes the decisions and so the scores.
"""

from __future__ import annotations

from functools import lru_cache


def _load_spacy(model: str, exclude: tuple[str, ...] = ()):
    import spacy

    try:
        return spacy.load(model, exclude=list(exclude))
    except OSError as err:
        raise RuntimeError(
            f"spaCy model {model!r} not found: give an installed package name or a model folder "
            "(the evaluate image ships en_core_web_lg)"
        ) from err


def _similarity(nlp):
    # Doc.similarity of single words is the cosine of their static vectors; the tokenizer alone gives
    # the same vectors as the full pipeline the official code runs, far faster.
    doc = lru_cache(maxsize=200_000)(nlp.make_doc)
    return lambda word1, word2: doc(word1).similarity(doc(word2))


def _spacy_name(nlp) -> str:
    import spacy

    return f"spaCy {spacy.__version__} model {nlp.meta.get('lang')}_{nlp.meta.get('name')} {nlp.meta.get('version')}"


class OfficialNLP:
    def __init__(self, spacy_model: str = "en_core_web_lg", nltk_data: str | None = None):
        import nltk
        from nltk.stem import WordNetLemmatizer

        if nltk_data:
            nltk.data.path.insert(0, nltk_data)
        self._nltk = nltk
        self._lemmatizer = WordNetLemmatizer()
        spacy_nlp = _load_spacy(spacy_model, exclude=("parser", "ner"))
        self.similarity = _similarity(spacy_nlp)
        self.description = (
            f"nltk {nltk.__version__} (punkt, averaged perceptron tagger, WordNet lemmatizer"
            f"{', data ' + nltk_data if nltk_data else ''}); {_spacy_name(spacy_nlp)} vectors "
            "(official: nltk + en_core_web_lg)"
        )

    def nouns(self, text: str) -> list[str]:
        tagged = self._nltk.pos_tag(self._nltk.word_tokenize(text))
        return [self._lemmatizer.lemmatize(word) for word, pos in tagged if pos.startswith("NN")]


class SpacyNLP:
    """Nouns from spaCy's own PTB tags (NN*) and lemmas; vectors from the same model."""

    def __init__(self, spacy_model: str = "en_core_web_lg"):
        self._nlp = _load_spacy(spacy_model, exclude=("parser", "ner"))
        self.similarity = _similarity(self._nlp)
        self.description = (
            f"{_spacy_name(self._nlp)}: tokenizer, tagger, lemmatizer and vectors "
            "(not the official nltk tagging: numbers can differ slightly from the official code)"
        )

    def nouns(self, text: str) -> list[str]:
        return _doc_nouns(self._nlp(text))

    def nouns_many(self, texts: list[str]) -> list[list[str]]:
        return [_doc_nouns(doc) for doc in self._nlp.pipe(texts, batch_size=256)]


def _doc_nouns(doc) -> list[str]:
    # WordNet's lemmatizer only knows lower-case forms, so the official code leaves "Dogs" as it is
    # (and it then matches nothing in AMBER's vocabulary); the same here.
    return [token.lemma_ if token.text.islower() else token.text for token in doc if token.tag_.startswith("NN")]


def local_spacy_model() -> str:
    """The en_core_web_md folder `make nlp-data` fetches (CLIPDPO_SPACY_MODEL names another), absolute."""
    import os
    from pathlib import Path

    path = Path(os.environ.get("CLIPDPO_SPACY_MODEL", ".cache/nlp/en_core_web_md"))
    if not (path / "meta.json").exists():
        raise FileNotFoundError(
            f"spaCy model not found at {path}: `make nlp-data` fetches it (make test and make "
            "pipeline-run do so themselves)"
        )
    return str(path.resolve())


def load_nlp(backend: str, spacy_model: str, nltk_data: str | None):
    if backend == "official":
        return OfficialNLP(spacy_model, nltk_data)
    return SpacyNLP(spacy_model)
