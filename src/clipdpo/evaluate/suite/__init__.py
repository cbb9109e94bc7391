"""The LLaVA benchmark suite (Table 4): `questions` reads a benchmark, `scoring` scores the replies
with the rules of `pope`, `mme`, `mmbench`, `vqa` (TextVQA, GQA) and `scienceqa`.

Every benchmark is one `questions.jsonl` (clipdpo's benchmark layout, documented in the README):
`id`, `image` (relative to the images folder), `question`, and per kind:
  pope      answer yes/no, category = split (adversarial / popular / random)
  mme       answer Yes/No, category = subtask (existence, count, ..., OCR)
  gqa       answer (the gold short answer)
  textvqa   answers: the 10 human answers
  scienceqa choices: [..], answer: index of the right one, optional hint (ScienceQA-IMG: image items only)
  mmbench   options: {"A": .., "B": ..}, answer: letter, index (rotations share index % 1e6), optional hint
Prompts follow LLaVA's evaluation scripts (short-answer or option-letter suffix).
"""
