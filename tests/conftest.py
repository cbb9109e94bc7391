"""Shared fixtures: a real S3 server (SeaweedFS) on loopback for the whole session."""

from __future__ import annotations

import os
import uuid

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from clipdpo import s3server

    server = s3server.start(str(tmp_path_factory.mktemp("seaweedfs")))
    saved = {key: os.environ.get(key) for key in server.env}
    os.environ.update(server.env)
    os.environ["CLIPDPO_S3_MAX_ATTEMPTS"] = "2"
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh bucket URI per test."""
    from clipdpo.storage import Storage

    uri = f"s3://t-{uuid.uuid4().hex[:12]}"
    Storage().ensure_bucket(uri + "/x")
    return uri
