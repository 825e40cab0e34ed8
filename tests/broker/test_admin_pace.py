"""The admin API's paced JSON: the same bytes ``json.dumps`` makes, whatever the row count."""

from __future__ import annotations

import json

import pytest

from sluice.broker.admin._pace import EVERY, JsonRows


@pytest.mark.parametrize("count", [0, 1, EVERY - 1, EVERY, EVERY + 1, 3 * EVERY + 5])
def test_json_rows_is_json_dumps_in_pieces(count: int) -> None:
    rows = [
        {"id": f"inv_{i}", "n": i, "text": 'a "quoted" \u00e9', "none": None} for i in range(count)
    ]
    out = JsonRows("rows")
    for row in rows:
        out.add(row)
    response = out.response()
    assert len(out) == count
    assert response.status == 200
    assert response.content_type == "application/json"
    assert response.body == b""
    assert b"".join(response.parts) == json.dumps({"rows": rows}).encode()
    # One piece per EVERY rows (plus the opening and the closing): never one 20 MB join.
    assert len(response.parts) == 2 + -(-count // EVERY)
