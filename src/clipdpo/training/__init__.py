"""DPO training for LLaVA-style models: losses, log-probs, data, distribution, checkpoints.

`clipdpo.train` is the entry point; these modules hold the parts, each testable alone.
"""
