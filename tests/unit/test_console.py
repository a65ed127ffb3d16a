"""The console's pure parts: session cookies and CSRF tokens, filters, the activity chart, and the guard's
one exception for form bodies (the console's paths only)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tako_shim.config import Settings
from tako_shim.http.console import auth, views
from tako_shim.http.guards import BrowserPolicy
from tako_vm.models.wire import ArtifactInfo, ExecutionRecordFull

KEYS = {"key-a-0123456789": "team-a", "key-b-0123456789": "team-b"}
NOW = 1_800_000_000.0


def settings(keys: dict[str, str] | None = None) -> Settings:
    return Settings(api_auth_enabled=True, api_keys=keys or KEYS)


def test_a_cookie_proves_its_tenant_and_never_carries_the_key() -> None:
    cookie = auth.issue_cookie("key-b-0123456789", now=NOW)
    assert "key-b" not in cookie
    session = auth.session_for(settings(), cookie, "unused", now=NOW + 60)
    assert session is not None and session.tenant == "team-b"
    assert auth.csrf_valid(session, session.csrf)
    assert not auth.csrf_valid(session, None) and not auth.csrf_valid(
        session, session.csrf[:-1] + ("1" if session.csrf.endswith("0") else "0")
    )


def test_forged_expired_malformed_or_revoked_cookies_prove_nothing() -> None:
    cookie = auth.issue_cookie("key-a-0123456789", now=NOW)
    version, expiry, nonce, mac = cookie.split(".")
    forged = [
        f"{version}.{int(expiry) + 3600}.{nonce}.{mac}",  # a longer life
        f"{version}.{expiry}.{nonce}.{'0' * 64}",
        auth.issue_cookie("not-a-configured-key", now=NOW),
        "v1.abc.def.ghi",
        "",
        None,
    ]
    for value in forged:
        assert auth.session_for(settings(), value, "unused", now=NOW + 60) is None, value
    assert auth.session_for(settings(), cookie, "unused", now=NOW + auth.SESSION_SECONDS + 1) is None
    revoked = settings({"key-b-0123456789": "team-b"})  # key a removed from the configuration
    assert auth.session_for(revoked, cookie, "unused", now=NOW + 60) is None


def test_sessions_of_one_key_have_different_csrf_tokens() -> None:
    first = auth.session_for(settings(), auth.issue_cookie("key-a-0123456789", now=NOW), "x", now=NOW)
    second = auth.session_for(settings(), auth.issue_cookie("key-a-0123456789", now=NOW), "x", now=NOW)
    assert first is not None and second is not None and first.csrf != second.csrf


def test_with_auth_off_the_console_is_the_default_tenant() -> None:
    session = auth.session_for(Settings(), None, "process-secret")
    assert session is not None and session.tenant == "default"
    other = auth.session_for(Settings(), None, "another-process")
    assert other is not None and other.csrf != session.csrf


def test_form_bodies_pass_the_guard_on_console_paths_only() -> None:
    policy = BrowserPolicy.from_settings(Settings())
    form = {"Host": "127.0.0.1:8000", "Content-Type": "application/x-www-form-urlencoded"}
    assert policy.problem("POST", form, True, form_ok=True) is None
    refused = policy.problem("POST", form, True)
    assert refused is not None and refused.status == 415
    text = {**form, "Content-Type": "text/plain"}
    assert policy.problem("POST", text, True, form_ok=True) is not None  # only forms, not any type
    cross = {**form, "Origin": "https://evil.example"}
    assert policy.problem("POST", cross, True, form_ok=True) is not None  # origin checks still apply


def test_console_enabled_defaults_to_on_for_loopback_only() -> None:
    assert Settings().console_on()
    network = Settings(server_host="0.0.0.0", api_auth_enabled=True, api_keys=KEYS)
    assert not network.console_on()
    assert Settings(
        server_host="0.0.0.0", api_auth_enabled=True, api_keys=KEYS, console_enabled=True
    ).console_on()
    assert not Settings(console_enabled=False).console_on()


def test_filters_name_what_they_drop() -> None:
    filters = views.parse_filters({"status": "bogus", "since": "yesterday", "page": "-3", "q": "x" * 300})
    assert filters.status is None and filters.since is None and filters.page == 1
    assert len(filters.q or "") == views.MAX_FILTER_TEXT
    assert any(p.startswith("status:") for p in filters.problems)
    assert any(p.startswith("since:") for p in filters.problems)
    assert any(p.startswith("page:") for p in filters.problems)
    good = views.parse_filters({"status": "failed", "since": "2026-01-02T03:04", "page": "2"})
    assert good.since == datetime(2026, 1, 2, 3, 4, tzinfo=UTC) and good.scans
    assert good.query(page=3) == {"status": "failed", "since": "2026-01-02T03:04", "page": "3"}


def record(minutes_ago: float, status: str, now: datetime) -> ExecutionRecordFull:
    created = (now - timedelta(minutes=minutes_ago)).isoformat()
    return ExecutionRecordFull(
        execution_id=f"j{minutes_ago}", status=status, job_type="d", created_at=created
    )  # type: ignore[arg-type]


def test_activity_counts_jobs_and_failures_per_minute_of_the_last_hour() -> None:
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    records = [
        record(0.5, "succeeded", now),
        record(0.6, "failed", now),
        record(10.2, "timeout", now),
        record(30, "running", now),
        record(61, "failed", now),  # older than an hour: not counted
    ]
    activity = views.activity(records, now)
    assert activity.total == 4 and activity.finished == 3 and activity.failed == 2
    assert activity.per_minute[-1] == (2, 1) and activity.per_minute[49] == (1, 1)
    assert activity.failure_rate == 2 / 3
    assert max(bar.height_all for bar in activity.bars) == activity.chart_height
    assert views.activity([], now).failure_rate is None


def test_only_png_jpeg_and_svg_show_inline() -> None:
    def art(name: str) -> ArtifactInfo:
        return ArtifactInfo(name=name, size_bytes=1, sha256="0" * 64)

    assert views.image_type(art("Plot.PNG")) == "image/png"
    assert views.image_type(art("a.svg")) == "image/svg+xml"
    assert views.image_type(art("page.html")) is None and views.image_type(art("x.svg.txt")) is None


def test_vendored_htmx_is_the_documented_file_with_its_licence() -> None:
    """Issue #15: htmx from its npm package, vendored with its version and licence. The file the
    pages load is the one whose sha256 VENDORED.txt and docs/console.md name."""
    import hashlib
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    static = root / "shim" / "tako_shim" / "http" / "console" / "static"
    (script,) = static.glob("htmx-*.min.js")
    version = script.name.removeprefix("htmx-").removesuffix(".min.js")
    digest = hashlib.sha256(script.read_bytes()).hexdigest()
    note = (static / "VENDORED.txt").read_text()
    assert f"htmx.org@{version}" in note and digest in note
    assert digest in (root / "docs" / "console.md").read_text()
    assert "Zero-Clause BSD" in note and (static / "htmx-LICENSE.txt").read_text().strip()
    base = (static.parent / "templates" / "base.html").read_text()
    assert re.findall(r"/static/(htmx-[^\"]+)\"", base) == [script.name]
    assert f'version:"{version}"' in script.read_text()  # the file says its own version
