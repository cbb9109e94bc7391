"""The world's cache key follows what its code does, not how the code is laid out."""

from __future__ import annotations

from clipdpo_world.build import code_digest


def test_code_digest_ignores_layout_comments_and_docstrings_but_not_code(tmp_path):
    base = tmp_path / "a.py"
    base.write_text('"""Doc."""\nimport os\n\n\ndef f(x):\n    """What f does."""\n    return x + 1  # one more\n')
    same = tmp_path / "b.py"
    same.write_text(
        '"""Another doc."""\nimport os\n\ndef f( x: int ) -> int:\n    """Reworded."""\n    return (x +\n'
        "            1)\n"
    )
    changed = tmp_path / "c.py"
    changed.write_text('"""Doc."""\nimport os\n\n\ndef f(x):\n    """What f does."""\n    return x + 2  # one more\n')
    assert code_digest(base) == code_digest(same)
    assert code_digest(base) != code_digest(changed)
