"""The built-in demo that `make pipeline-run` uses without a cluster, all built here without downloads:

- `models`: tiny random models from configs (a LLaVA, a Llama chat model, an open_clip CLIP);
- `benchmarks`: a small evaluation set from scikit-image's photos in the benchmarks' real layouts;
- `configs`: the stage configs that point the stages at them.
"""
