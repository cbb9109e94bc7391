"""Cluster glue: the training job that runs on many nodes (Trainer v2 TrainJob or Training Operator
v1 PyTorchJob), how a pipeline step follows it, and the content-addressed stage image tags."""
