"""A synthetic world with exact ground truth: images, a CLIP and a LLaVA trained on it, a benchmark.

There are no real CLIP or LVLM weights on a laptop or CI machine; this world stands in for the web:
`scene` draws seeded images of objects (kind, colour, count, position), `language` writes their
captions (correct, or naming an absent co-occurring partner) and questions, `data` writes them as
PNG folders that `ingest` reads.
"""
