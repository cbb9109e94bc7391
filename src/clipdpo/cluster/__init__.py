"""Cluster glue: the PyTorchJob that runs training on many nodes, and how a pipeline step follows it."""
