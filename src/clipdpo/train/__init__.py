"""The train stage: `python -m clipdpo.train` (see clipdpo.training for the parts)."""
