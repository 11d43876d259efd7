"""What the broker advertises as ``supported_parameters`` is what the service forwards by default."""

from __future__ import annotations

from zgserve.common.parameters import SUPPORTED_CHAT_PARAMETERS
from zgserve.service.params import CHAT_FIELDS, ParamPolicy

PLUMBING = {"model", "messages", "stream", "stream_options", "user"}


def test_advertised_parameters_follow_the_service_allow_list() -> None:
    policy = ParamPolicy()
    forwarded = {name for name in CHAT_FIELDS if name not in policy.refused}
    assert set(SUPPORTED_CHAT_PARAMETERS) <= forwarded
    # Every parameter the service forwards by default is advertised (plumbing aside).
    assert forwarded - PLUMBING <= set(SUPPORTED_CHAT_PARAMETERS), (
        forwarded - PLUMBING - set(SUPPORTED_CHAT_PARAMETERS)
    )
