"""The low-severity findings of issue #19: requirement line breaks, aiohttp's own 400s, hostile
artifact names in headers. The HTTP ones run against a real server process (the sandbox tier's
``server`` fixture); the rest are the pure checks those paths use."""

from __future__ import annotations

import asyncio
from email.message import Message
from urllib.parse import unquote

import httpx
import pytest

from tako_runner import runner
from tako_shim import submission
from tako_shim.errors import InvalidRequest
from tako_shim.http.guards import content_disposition
from tako_vm.testing import LocalServer


# Line breaks as pip (which splits on str.splitlines) sees them; tabs are PEP 508 whitespace and allowed.
@pytest.mark.parametrize(
    "entry", ["six>=\n--pre", "six>=1.0\r\n--index-url=http://evil", "six>=1.0,\x0b<2", "six>=1.0\u2028--pre"]
)
def test_a_line_break_inside_a_requirement_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="not a plain"):
        runner.check_requirements([entry])
    with pytest.raises(InvalidRequest, match="not a valid requirement"):
        submission.check_requirements([entry])
    runner.check_requirements(["six >= 1.0, < 2"])  # spaces stay allowed


@pytest.mark.sandbox
async def test_aiohttps_low_level_400_has_no_banner_and_a_correlation_id(server: LocalServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"NOT-HTTP \x01\x02\r\n\r\n")
    try:
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert lines[0].split(" ", 2)[1] == "400"
    assert headers["server"] == "tako-vm" and "aiohttp" not in head.decode("latin-1").lower()
    assert headers["x-correlation-id"] and headers["x-content-type-options"] == "nosniff"
    assert httpx.Response(400, content=body).json()["correlation_id"] == headers["x-correlation-id"]


@pytest.mark.parametrize("name", ['quote".txt', "back\\slash.txt", "résumé.pdf", 'x"; filename="evil.sh'])
def test_content_disposition_cannot_be_broken_by_a_name(name: str) -> None:
    header = content_disposition(name)
    message = Message()
    message["Content-Disposition"] = header
    assert message.get_param("filename", header="Content-Disposition") != "evil.sh"
    assert "\r" not in header and "\n" not in header
    encoded = header.split("filename*=UTF-8''", 1)[1]
    assert unquote(encoded) == name


@pytest.mark.sandbox
def test_artifact_names_with_quotes_download_and_cr_lf_names_are_refused_at_collection(
    http: httpx.Client,
) -> None:
    code = (
        "open('/output/a\"b.txt', 'w').write('quoted')\n"
        "open('/output/evil\\r\\nSet-Cookie: x=1', 'w').write('split')\n"
        "print('ok')"
    )
    job_id = http.post("/execute/async", json={"code": code}).json()["job_id"]
    record = http.get(
        f"/jobs/{job_id}/result", params={"wait": "true", "timeout": 120, "view": "full"}
    ).json()
    assert record["status"] == "succeeded", record
    assert [a["name"] for a in record["artifacts"]] == ['a"b.txt']  # the CR/LF name was not collected
    got = http.get(f"/jobs/{job_id}/artifacts/a%22b.txt")
    assert got.status_code == 200 and got.content == b"quoted"
    assert got.headers["Content-Disposition"].startswith('attachment; filename="a\\"b.txt"')
    refused = http.get(f"/jobs/{job_id}/artifacts/evil%0D%0ASet-Cookie")
    assert refused.status_code == 400 and "set-cookie" not in refused.headers
