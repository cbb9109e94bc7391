"""generate: captions from a pool of LVLMs and LLM-written questions with right and wrong answers."""
