"""A synthetic world with exact ground truth: images, a CLIP and a LLaVA trained on it, a benchmark.

There are no real CLIP or LVLM weights on a laptop or CI machine; this world stands in for the web, so that
a run shows the method's effect where it can be measured exactly. The product (clipdpo) imports nothing
from here: the world plugs into it through the same configs a user's models and data use.

- `scene`: seeded 32x32 images of 1-3 object groups (11 kinds, each a fixed shape with two colours;
  count 1-2; slot left/middle/right) on a background that sets the image category of the paper's
  Sec. 4.2 (plain: objects, field: scenes, page of printed glyphs: text, any image with a man:
  people). Five kinds co-occur in pairs (cup/book, cat/chair, bird/tree, car/house, horse/ball).
- `language`: correct captions, captions that also name an absent partner, Yes/No questions.
- `clip`: an open_clip ViT trained on correct captions only; refuses to rank below 90%.
- `tower` + `lvlm`: LLaVA with the world CLIP's image tower (frozen, penultimate layer, as
  LLaVA-1.5 uses OpenAI's CLIP) and a 3x64 Llama, SFT on captions of which 40% of the tempting
  images name the absent partner; refuses greedy Cover below 90%.
- `benchmark`: AMBER's official layout, POPE questions and a zero-shot folder on held-out images.
- `build`: all of it once, cached by a hash of the world-making code and config
  (`python -m clipdpo_world build --out .local/world --seed 0`, or `make world`).
- `stageconfigs`: the stage configs a pipeline run on the world uses (the experiments that run them are
  clipdpo_lab's); `povid_source.rewriter`: POVID's rule-based injector, the POVID source's plugin.
- `qawriter` + `qawriter_build`: the QA writer (the paper's instruction LLM), a small Llama chat model
  trained from the world's truth and cached as an add-on of a built world (`<world>/qa-writer-<key>/`);
  `qawriter_measure` scores its QA rows on the LVLM's captions. On by default in `python -m clipdpo_lab run`
  (it sets generate's QA config to `stageconfigs.world_qa_config`; `--no-qa`, make QA=0, leaves it out).

Its measurements (the self-checks of each seed, the effect of each method on it) are in docs/world.md.
"""
