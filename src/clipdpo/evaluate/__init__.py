"""The evaluate stage's scorers: AMBER (exact to the official code) and the LLaVA benchmark suite."""
