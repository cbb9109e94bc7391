"""CLIP-DPO as a Kubernetes job suite."""

__version__ = "0.1.0"
