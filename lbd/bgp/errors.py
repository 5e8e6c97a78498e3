"""BGP error codes (RFC 4271 §4.5, RFC 4486, RFC 6608, RFC 7313) and ``BgpError``.

Every decoder in :mod:`lbd.bgp` raises :class:`BgpError` and nothing else on
malformed input. The exception carries the NOTIFICATION that RFC 4271 §6
prescribes for the fault, so the session FSM can send it verbatim.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    MESSAGE_HEADER = 1
    OPEN_MESSAGE = 2
    UPDATE_MESSAGE = 3
    HOLD_TIMER_EXPIRED = 4
    FSM = 5
    CEASE = 6
    ROUTE_REFRESH = 7  # RFC 7313 §5


class HeaderSubcode(enum.IntEnum):
    CONNECTION_NOT_SYNCHRONIZED = 1
    BAD_MESSAGE_LENGTH = 2
    BAD_MESSAGE_TYPE = 3


class OpenSubcode(enum.IntEnum):
    UNSPECIFIC = 0
    UNSUPPORTED_VERSION = 1
    BAD_PEER_AS = 2
    BAD_BGP_IDENTIFIER = 3
    UNSUPPORTED_OPTIONAL_PARAMETER = 4
    UNACCEPTABLE_HOLD_TIME = 6
    UNSUPPORTED_CAPABILITY = 7  # RFC 5492 §5


class UpdateSubcode(enum.IntEnum):
    MALFORMED_ATTRIBUTE_LIST = 1
    UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE = 2
    MISSING_WELL_KNOWN_ATTRIBUTE = 3
    ATTRIBUTE_FLAGS_ERROR = 4
    ATTRIBUTE_LENGTH_ERROR = 5
    INVALID_ORIGIN = 6
    INVALID_NEXT_HOP = 8
    OPTIONAL_ATTRIBUTE_ERROR = 9
    INVALID_NETWORK_FIELD = 10
    MALFORMED_AS_PATH = 11


class FsmSubcode(enum.IntEnum):
    """RFC 6608 subcodes for an unexpected message in a given state."""

    UNSPECIFIED = 0
    UNEXPECTED_IN_OPENSENT = 1
    UNEXPECTED_IN_OPENCONFIRM = 2
    UNEXPECTED_IN_ESTABLISHED = 3


class CeaseSubcode(enum.IntEnum):
    """RFC 4486."""

    MAX_PREFIXES = 1
    ADMINISTRATIVE_SHUTDOWN = 2
    PEER_DECONFIGURED = 3
    ADMINISTRATIVE_RESET = 4
    CONNECTION_REJECTED = 5
    OTHER_CONFIGURATION_CHANGE = 6
    CONNECTION_COLLISION_RESOLUTION = 7
    OUT_OF_RESOURCES = 8
    BFD_DOWN = 10  # RFC 9384


class RouteRefreshSubcode(enum.IntEnum):
    INVALID_MESSAGE_LENGTH = 1  # RFC 7313 §5


class BgpError(ValueError):
    """Malformed BGP input, with the NOTIFICATION (code, subcode, data) to send."""

    def __init__(self, code: int, subcode: int, data: bytes = b"", reason: str = "") -> None:
        self.code = int(code)
        self.subcode = int(subcode)
        self.data = bytes(data)
        self.reason = reason or describe(code, subcode)
        super().__init__(f"{self.reason} ({self.code}/{self.subcode})")

    @property
    def pair(self) -> tuple[int, int]:
        return (self.code, self.subcode)


_SUBCODES: dict[int, type[enum.IntEnum]] = {
    ErrorCode.MESSAGE_HEADER: HeaderSubcode,
    ErrorCode.OPEN_MESSAGE: OpenSubcode,
    ErrorCode.UPDATE_MESSAGE: UpdateSubcode,
    ErrorCode.FSM: FsmSubcode,
    ErrorCode.CEASE: CeaseSubcode,
    ErrorCode.ROUTE_REFRESH: RouteRefreshSubcode,
}


def describe(code: int, subcode: int) -> str:
    """Human-readable name of a NOTIFICATION code/subcode, for logs and status."""
    try:
        name = ErrorCode(code).name.lower().replace("_", " ")
    except ValueError:
        return f"unknown error {code}/{subcode}"
    table = _SUBCODES.get(code)
    if table is not None:
        try:
            return f"{name}: {table(subcode).name.lower().replace('_', ' ')}"
        except ValueError:
            pass
    return name if subcode == 0 else f"{name} (subcode {subcode})"
