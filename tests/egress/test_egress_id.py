"""The egress identity survives the loss of its file (issue 10): a power loss can leave
``egress-id`` missing or cut short. The broker dies right after committing an egress
transaction (its rows not yet trimmed), the file is damaged, and the restarted broker must
resume under the same ``sluice-producer`` and send nothing twice: a new identity would send
those committed rows again under a name that no reader can match with the first."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.broker.conftest import BrokerProcess, ServiceProcess
from tests.ingress_kafka.conftest import deploy_with_kafka
from tests.kafka import Tansu

from .conftest import check_exactly_once, new_topic, produce, read_output

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


@pytest.mark.parametrize("loss", ["removed", "empty", "cut"])
async def test_a_damaged_egress_id_file_resends_nothing(
    loss: str, kafka: Tansu, tmp_path: Path, egress_services: ServiceProcess
) -> None:
    src, out = new_topic(kafka, 2), new_topic(kafka, 2)
    n = 300
    want = {i: f"k{i % 13}".encode() for i in range(n)}
    produce(kafka, src, [(want[i].decode(), {"i": i}, None) for i in range(n)])
    data = tmp_path / "data"
    proc = BrokerProcess(data)
    proc.start({"SLUICE_FAULTS": "after-egress-commit=1"})
    try:
        admin = f"http://127.0.0.1:{proc.admin}"
        async with httpx.AsyncClient(timeout=30) as c:
            await deploy_with_kafka(c, admin, egress_services.uri, kafka, http1=True)
            r = await c.post(
                f"{admin}/subscriptions",
                json={
                    "source": f"kafka://local/{src}",
                    "sink": "service://Enrich/map",
                    "options": {"name": "ident", "output_topic": out},
                },
            )
            assert r.status_code == 201, r.text
        assert proc.proc is not None
        await asyncio.to_thread(proc.proc.wait, 120)  # it kills itself at the point
        assert "SIGKILL at after-egress-commit" in proc.log.read_text(errors="replace")
        path = data / "egress-id"
        ident = path.read_text()
        if loss == "removed":
            path.unlink()
        else:
            path.write_text("" if loss == "empty" else ident[:5])
        await asyncio.to_thread(proc.start)
        got = await asyncio.to_thread(read_output, kafka, out, n)
        check_exactly_once(got, want)
        assert {o.seq[0] for o in got} == {f"sluice-{ident}-local-0"}
        assert path.read_text() == ident, "the file was not restored"
    finally:
        proc.stop()
