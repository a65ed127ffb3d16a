"""Which API errors make the operator retry a reconcile pass, and how soon (fast, no cluster).

The end-to-end behaviour (refused writes, then every job ends once) is in test_fault_operator_writes.py.
"""

from __future__ import annotations

import aiohttp
import pytest

from tako_operator.io.kube import KubeApiError, retryable
from tako_operator.reconciler import api_retry_delay
from tako_operator.settings import Settings


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_transient_api_statuses_are_retried(status: int) -> None:
    assert retryable(KubeApiError(status, "x", "x"))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_requests_the_server_will_always_refuse_are_not_retried(status: int) -> None:
    assert not retryable(KubeApiError(status, "x", "x"))


def test_connection_errors_are_retried_and_programming_errors_are_not() -> None:
    assert retryable(KubeApiError(0, "ClientConnectorError", "connection refused"))
    assert retryable(aiohttp.ServerDisconnectedError())
    assert retryable(ConnectionResetError())
    assert retryable(TimeoutError())
    assert not retryable(KeyError("metadata"))
    assert not retryable(ValueError("unexpected object kind"))


def test_the_retry_delay_doubles_from_half_a_second_up_to_30_seconds() -> None:
    config = Settings()
    assert [api_retry_delay(config, n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert api_retry_delay(config, 10_000) == 30
