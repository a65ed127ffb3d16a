"""Which API errors make the operator retry a reconcile pass, and how soon (fast, no cluster).

The end-to-end behaviour (refused writes, then every job ends once) is in test_fault_operator_writes.py.
"""

from __future__ import annotations

import pytest
import urllib3
from kubernetes.client import ApiException

from tako_operator.io.kube import retryable
from tako_operator.reconciler import api_retry_delay
from tako_operator.settings import Settings


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_transient_api_statuses_are_retried(status: int) -> None:
    assert retryable(ApiException(status=status, reason="x"))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_requests_the_server_will_always_refuse_are_not_retried(status: int) -> None:
    assert not retryable(ApiException(status=status, reason="x"))


def test_connection_errors_are_retried_and_programming_errors_are_not() -> None:
    pool = urllib3.HTTPConnectionPool("127.0.0.1", 1)
    assert retryable(urllib3.exceptions.MaxRetryError(pool, "/api", reason=ConnectionRefusedError()))
    assert retryable(urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError()))
    assert retryable(ConnectionResetError())
    assert not retryable(KeyError("metadata"))
    assert not retryable(ValueError("unexpected object kind"))


def test_the_retry_delay_doubles_from_half_a_second_up_to_30_seconds() -> None:
    config = Settings()
    assert [api_retry_delay(config, n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert api_retry_delay(config, 10_000) == 30
