"""An in-process fake of the Kling API for tests, speaking the wire format only.

Nothing here imports the client: a fake that shared the client's code could not catch its bugs.
"""

from ._faults import Fault, FaultPlan
from ._record import CallbackRecord, RequestRecord, ServerRecord
from ._server import FakeKlingServer
from ._tasks import Durations
from ._webhooks import CallbackFaults, sign_webhook

__all__ = [
    "CallbackFaults",
    "CallbackRecord",
    "Durations",
    "FakeKlingServer",
    "Fault",
    "FaultPlan",
    "RequestRecord",
    "ServerRecord",
    "sign_webhook",
]
