"""grpc's report of a write to a client that has gone is not an ERROR of the gateway's."""

from __future__ import annotations

import logging
import sys

import pytest
from grpc._cython import cygrpc  # type: ignore[import-untyped, unused-ignore]

from gateway.telemetry.logs import GRPC_SERVER_LOGGER, QuietPeerGone


def _report(logger: logging.Logger, error: BaseException) -> None:
    """As grpc's server reports a servicer's failure: ERROR with the traceback."""
    try:
        raise error
    except BaseException:
        logger.error("ExecuteBatchError raised in core by servicer method [/x]", exc_info=True)


@pytest.fixture
def logger() -> logging.Logger:
    grpc_logger = logging.getLogger(GRPC_SERVER_LOGGER + ".test")
    grpc_logger.filters.clear()
    grpc_logger.addFilter(QuietPeerGone())
    return grpc_logger


def test_a_write_to_a_gone_client_is_not_an_error(
    logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    gone = cygrpc.ExecuteBatchError('Failed "execute_batch": (SendMessageOperation,)')
    with caplog.at_level(logging.INFO, logger=logger.name):
        _report(logger, gone)
    assert caplog.records == []
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        _report(logger, gone)
    [record] = caplog.records
    assert record.levelno == logging.DEBUG and record.exc_info is None


def test_other_failures_stay_errors(
    logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=logger.name):
        _report(logger, RuntimeError("a bug"))
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.exc_info[0] is RuntimeError
    assert sys.exc_info() == (None, None, None)
