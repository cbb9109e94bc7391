"""The clipdpo Kubeflow Pipelines (v2) definition, its compile step and its submit/local runner."""
