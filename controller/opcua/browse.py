"""Browse in pages, as OPC UA Part 4 asks (5.8.2 Browse, 5.8.3 BrowseNext).

asyncua 2.1 answers every reference of a node whatever the client's
``RequestedMaxReferencesPerNode``, and has no BrowseNext at all (the request is
answered BadServiceUnsupported). A client that sizes its pages (a SCADA
driver browsing a large hall a hundred references at a time) got them all in
one answer, with nothing to continue from. Here, per session:

* a Browse that finds more references than the client asked for answers the
  first ``RequestedMaxReferencesPerNode`` and holds the rest under a
  continuation point (random, 16 bytes, good for that session only);
* BrowseNext gives the next page under the same point (until none is left:
  then no point), or releases the points it names
  (``ReleaseContinuationPoints``: no references, Good);
* a point this session does not hold (released, used up, another session's,
  made up) is BadContinuationPointInvalid;
* a session holds at most ``MAX_CONTINUATION_POINTS`` (the Server's
  ``MaxBrowseContinuationPoints``); a Browse that would need one more is
  BadNoContinuationPoints for that node, as Part 4 says, until the client
  finishes or releases one. The points go with the session.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import struct_from_binary

from .typed import node_id, status_code

__all__ = ["MAX_CONTINUATION_POINTS", "BrowsePages", "install_browse_next"]

#: continuation points one session may hold (ServerCapabilities' MaxBrowseContinuationPoints)
MAX_CONTINUATION_POINTS = 16
_BROWSE_NEXT = node_id(ua.ObjectIds.BrowseNextRequest_Encoding_DefaultBinary)

Browse = Callable[[ua.BrowseParameters], Awaitable[list[ua.BrowseResult]]]


class BrowsePages:
    """One session's Browse in pages and its BrowseNext (see the module docstring);
    ``browse`` is the session's own, unpaged."""

    def __init__(self, browse: Browse, limit: int = MAX_CONTINUATION_POINTS) -> None:
        self._browse = browse
        self.limit = limit
        #: continuation point -> (the references not yet given, the page size)
        self._held: dict[bytes, tuple[list[ua.ReferenceDescription], int]] = {}

    @property
    def held(self) -> int:
        """Continuation points this session holds now."""
        return len(self._held)

    async def browse(self, params: ua.BrowseParameters) -> list[ua.BrowseResult]:
        results = await self._browse(params)
        n = params.RequestedMaxReferencesPerNode
        if not n:  # 0: no limit
            return results
        return [self._first_page(r, n) for r in results]

    def _first_page(self, result: ua.BrowseResult, n: int) -> ua.BrowseResult:
        refs = result.References
        if len(refs) <= n:
            return result
        if len(self._held) >= self.limit:
            return ua.BrowseResult(StatusCode=status_code(ua.StatusCodes.BadNoContinuationPoints))
        cp = secrets.token_bytes(16)
        self._held[cp] = (refs[n:], n)
        return ua.BrowseResult(
            StatusCode=result.StatusCode, ContinuationPoint=cp, References=refs[:n]
        )

    async def browse_next(self, params: ua.BrowseNextParameters) -> list[ua.BrowseResult]:
        out = []
        for cp in params.ContinuationPoints:
            held = self._held.pop(cp, None) if cp else None
            if held is None:
                code = ua.StatusCodes.BadContinuationPointInvalid
                out.append(ua.BrowseResult(StatusCode=status_code(code)))
                continue
            if params.ReleaseContinuationPoints:
                out.append(ua.BrowseResult())
                continue
            refs, n = held
            page = ua.BrowseResult(References=refs[:n])
            if len(refs) > n:
                self._held[cp] = (refs[n:], n)
                page.ContinuationPoint = cp
            out.append(page)
        return out


def install_browse_next() -> None:
    """Serve BrowseNext requests (asyncua's processor answers them
    BadServiceUnsupported) through the session's ``browse_next``, with the checks
    asyncua makes for every request of an activated session. Once per process."""
    if getattr(UaProcessor, "_thermogate_browse_next", False):
        return
    process = UaProcessor._process_message

    async def process_message(
        self: UaProcessor, typeid: ua.NodeId, requesthdr: Any, seqhdr: Any, body: Any
    ) -> bool:
        if typeid != _BROWSE_NEXT:
            return await process(self, typeid, requesthdr, seqhdr, body)
        session = self.session
        if session is None:
            raise ServiceError(ua.StatusCodes.BadSessionIdInvalid)
        if not session.is_activated():
            raise ServiceError(ua.StatusCodes.BadSessionNotActivated)
        rules = self._connection.security_policy.permissions
        if rules is not None and rules.check_validity(session.user, typeid, body) is False:
            raise ua.uaerrors.BadUserAccessDenied
        self.session_last_activity = time.monotonic()
        session.touch()
        params = struct_from_binary(ua.BrowseNextParameters, body)
        response = ua.BrowseNextResponse()
        response.Parameters.Results = await session.browse_next(params)
        self.send_response(requesthdr.RequestHandle, seqhdr, response)
        return True

    UaProcessor._process_message = process_message  # type: ignore[method-assign]
    UaProcessor._thermogate_browse_next = True  # type: ignore[attr-defined]
