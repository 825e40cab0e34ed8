"""The admin API and the CLI on top of it (one-line errors, no tracebacks)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx

from sluice.broker.server import Broker

from .conftest import ROOT, Client, ServiceProcess, free_port, wait_port


async def sluice(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sluice.broker",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_admin_api(client: Client, restate_service: ServiceProcess) -> None:
    dep = await client.register(restate_service.uri)
    deps = (await client.admin.get("/deployments")).json()["deployments"]
    assert [d["id"] for d in deps] == [dep["id"]]
    svcs = {s["name"]: s for s in (await client.admin.get("/services")).json()["services"]}
    assert svcs["Counter"]["ty"] == "VirtualObject"
    desc = (await client.admin.get("/services/Counter")).json()
    assert {h["name"] for h in desc["handlers"]} >= {"add", "get"}
    assert (await client.admin.get("/services/Nope")).status_code == 404
    spec = (await client.admin.get("/openapi")).json()
    assert "/deployments" in spec["paths"]
    assert (await client.admin.get("/health")).status_code == 200
    # Re-registering the same uri keeps the id.
    again = await client.register(restate_service.uri)
    assert again["id"] == dep["id"]
    bad = await client.admin.post("/deployments", json={"uri": "http://127.0.0.1:1"})
    assert bad.status_code == 502 and "cannot reach" in bad.json()["message"]
    assert (await client.admin.post("/deployments", json={})).status_code == 400
    r = await client.call("/Counter/q/add", 2)
    iid = r.headers["x-restate-id"]
    q = await client.admin.post(
        "/query", json={"query": f"SELECT id, status FROM sys_invocation WHERE id = '{iid}'"}
    )
    assert q.json() == {"rows": [{"id": iid, "status": "completed"}]}
    row = (await client.admin.get(f"/invocations/{iid}")).json()
    assert 0 <= row["partition"] < 8
    q = await client.admin.post(
        "/query",
        json={
            "query": "SELECT key, value_utf8 FROM state "
            "WHERE service_name = 'Counter' AND service_key = 'q'"
        },
    )
    assert q.json()["rows"] == [{"key": "count", "value_utf8": "2"}]
    bad = await client.admin.post("/query", json={"query": "DELETE FROM x"})
    assert bad.status_code == 400 and "supported" in bad.json()["message"]
    bad = await client.admin.post("/query", json={"query": 5})
    assert bad.status_code == 400 and "not a string" in bad.json()["message"]
    # Found on the first matching row, while the answer is being encoded: still a 400.
    bad = await client.admin.post("/query", json={"query": "SELECT nope FROM sys_invocation"})
    assert bad.status_code == 400 and "unknown column 'nope'" in bad.json()["message"]
    r = await client.admin.patch("/invocations/inv_1" + "A" * 32 + "/kill")
    assert r.status_code == 404
    assert (await client.admin.delete(f"/deployments/{dep['id']}")).status_code == 202
    assert (await client.admin.get("/services")).json()["services"] == []


async def test_cli_commands(
    broker: Broker, client: Client, restate_service: ServiceProcess
) -> None:
    admin = ["--admin-url", f"http://127.0.0.1:{broker.admin_port}"]
    nobody = f"http://127.0.0.1:{free_port()}"
    rc, out, err = await sluice(
        "deployments", "--admin-url", nobody, "register", restate_service.uri
    )
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
    rc, out, err = await sluice("deployments", *admin, "register", restate_service.uri)
    assert rc == 0, err
    assert out.startswith("registered dp_")
    rc, out, _ = await sluice("services", *admin, "list")
    assert "Counter  VirtualObject" in out
    await client.call("/Counter/cli/add", 41)
    rc, out, _ = await sluice("state", *admin, "get", "Counter", "cli")
    assert out.strip() == "count = 41"
    r = await client.call("/Greeter/wait_long/send")
    iid = r.json()["invocationId"]
    await asyncio.sleep(0.3)
    rc, out, _ = await sluice("invocations", *admin, "list")
    assert iid in out
    rc, out, err = await sluice("invocations", *admin, "kill", iid)
    assert rc == 0 and "kill" in out, err
    rc, out, err = await sluice("invocations", *admin, "cancel", "inv_1bad")
    assert rc == 1 and "bad invocation id" in err and "Traceback" not in err


async def test_server_subcommand(tmp_path: Path) -> None:
    ingress, admin = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sluice.broker",
        "server",
        "--data-dir",
        str(tmp_path / "d"),
        "--ingress-port",
        str(ingress),
        "--admin-port",
        str(admin),
        "--partitions",
        "4",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.to_thread(wait_port, admin)
        await asyncio.to_thread(wait_port, ingress)
        async with httpx.AsyncClient() as c:
            assert (await c.get(f"http://127.0.0.1:{ingress}/restate/health")).status_code == 200
            assert (await c.get(f"http://127.0.0.1:{admin}/health")).status_code == 200
        status = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "sluice.broker", "log", "--admin-url",
             f"http://127.0.0.1:{admin}", "status"],
            capture_output=True, text=True, check=False, cwd=ROOT,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith(f"embedded log in {tmp_path / 'd' / 'log'}"), status.stdout
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0
    assert '"partitions": 4' in (tmp_path / "d" / "sluice.json").read_text()
