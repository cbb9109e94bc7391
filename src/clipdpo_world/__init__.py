"""A synthetic world with exact ground truth: images, a CLIP and a LLaVA trained on it, a benchmark.

There are no real CLIP or LVLM weights on a laptop or CI machine; this world stands in for the web
(issue 17):

- `scene`: seeded 32x32 images of 1-3 object groups (11 kinds, each a fixed shape with two colours;
  count 1-2; slot left/middle/right) on a background that sets the image category of the paper's
  Sec. 4.2 (plain: objects, field: scenes, page of printed glyphs: text, any image with a man:
  people). Five kinds co-occur in pairs (cup/book, cat/chair, bird/tree, car/house, horse/ball).
- `language`: correct captions, captions that also name an absent partner, Yes/No questions.
- `clip`: an open_clip ViT trained on correct captions only; refuses to rank below 90%.
- `tower` + `lvlm`: LLaVA with the world CLIP's image tower (frozen, penultimate layer, as
  LLaVA-1.5 uses OpenAI's CLIP) and a 2x64 Llama, SFT on captions of which 30% of the tempting
  images name the absent partner; refuses greedy Cover below 90%.
- `benchmark`: AMBER's official layout, POPE questions and a zero-shot folder on held-out images.
- `build`: all of it once, cached by a hash of the world-making code and config
  (`python -m clipdpo_world build --out .local/world --seed 0`, or `make world`).
- `stageconfigs`: the stage configs a pipeline run on the world uses; `effect`: runs the stages
  in-process (`python -m clipdpo_world measure ...`); `control`: the shuffled-score control arm.
- `qawriter` + `qawriter_build`: the QA writer (the paper's instruction LLM), a small Llama chat model
  trained from the world's truth and cached as an add-on of a built world (`<world>/qa-writer-<key>/`);
  `qawriter_measure` scores its QA rows on the LVLM's captions. Opt-in: `pipelines.run --qa` (make QA=1)
  sets generate's QA config to `stageconfigs.world_qa_config`.

Measured 2026-11-29 (2 shared CPU cores), worlds 0/1/2 with the default configs, real stages, 300
held-out images; greedy = the evaluate stage's AMBER (spaCy md), sampled = T 1.0, 3 samples per
image, exact world metrics. base -> CLIP-DPO (control: scores shuffled within each image):
  greedy CHAIR  3.3->2.3 (3.2) | 5.3->4.8 (4.5) | 6.5->4.6 (6.3)
  greedy Hal    9.0->6.7 (8.7) | 15.0->14.0 (13.0) | 16.7->11.7 (16.0)
  sampled CHAIR 10.0->6.5 (10.4) | 11.9->8.3 (11.6) | 13.2->8.9 (12.7)
  sampled Hal   27.8->18.1 (28.4) | 31.9->23.0 (30.9) | 32.7->21.7 (31.3)
  Cover within +-1 point; AMBER score +1.45 / +0.15 / +0.9. World 2 is
  `python -m clipdpo_world measure --seed 2 --out OUT --run-root RUN` (~5 min once built).
The world's LVLM answers Yes/No questions near chance on worlds 0 and 1 (AMBER F1 ~60, POPE ~50%).
"""
