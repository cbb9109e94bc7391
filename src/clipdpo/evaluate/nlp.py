"""The NLP resources AMBER's official code uses, behind the small interface the scorer needs.

Official: nltk `word_tokenize` (punkt) + `pos_tag` (averaged perceptron) + `WordNetLemmatizer`
(WordNet 3.0), and spaCy `en_core_web_lg` vectors for word similarity. All are loaded from
paths the user gives (nltk data folder, spaCy model name or folder), never downloaded here.
`describe()` names what produced the numbers; the report prints it, because another spaCy model
(md/sm) changes the similarity decisions and so the scores.
"""

from __future__ import annotations

from functools import lru_cache


class OfficialNLP:
    def __init__(self, spacy_model: str = "en_core_web_lg", nltk_data: str | None = None):
        import nltk
        import spacy
        from nltk.stem import WordNetLemmatizer

        if nltk_data:
            nltk.data.path.insert(0, nltk_data)
        self._nltk = nltk
        self._lemmatizer = WordNetLemmatizer()
        self._spacy = spacy.load(spacy_model)
        self.description = (f"nltk {nltk.__version__} (punkt, averaged_perceptron_tagger, WordNet lemmatizer"
                            f"{', data ' + nltk_data if nltk_data else ''}); spaCy {spacy.__version__} model "
                            f"{self._spacy.meta.get('name')} {self._spacy.meta.get('version')} "
                            f"(official: en_core_web_lg)")
        self._doc = lru_cache(maxsize=100_000)(self._spacy)

    def nouns(self, text: str) -> list[str]:
        tagged = self._nltk.pos_tag(self._nltk.word_tokenize(text))
        return [self._lemmatizer.lemmatize(word) for word, pos in tagged if pos.startswith("NN")]

    def similarity(self, word1: str, word2: str) -> float:
        # spaCy Doc.similarity, as the official code (which re-parses both words on every call)
        return self._doc(word1).similarity(self._doc(word2))
