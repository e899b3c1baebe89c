"""An in-process fake of the Kling API for tests, speaking the wire format only.

Nothing here imports the client: a fake that shared the client's code could not catch its bugs.
"""

from ._faults import Fault, FaultPlan
from ._record import RequestRecord, ServerRecord
from ._server import FakeKlingServer
from ._tasks import Durations

__all__ = [
    "Durations",
    "FakeKlingServer",
    "Fault",
    "FaultPlan",
    "RequestRecord",
    "ServerRecord",
]
