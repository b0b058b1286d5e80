"""``moto_server`` with DynamoDB's writes atomic, as the real service's are.

moto's DynamoDB backend checks a ``ConditionExpression`` and then stores the
item with no lock between the two, and copies tables during
``TransactWriteItems`` while other requests write them; its server handles
requests on threads.  Two conditional puts on one version could then both
succeed (the contract test of concurrent reapers counted 13 reaps of 12
leases under load), and a transaction overlapping a write answered 500.
Real DynamoDB serialises writes to an item, and the engine's fencing relies
on that, so this launcher serialises every call into moto's DynamoDB backend
(they take microseconds; SQS long polls are not affected) and then runs
moto's own server entry point with the same arguments.
"""

from __future__ import annotations

import functools
import inspect
import threading
from typing import Any

from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

_LOCK = threading.RLock()


def _serialised(fn: Any) -> Any:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return fn(*args, **kwargs)

    return call


for _name, _fn in list(vars(DynamoDBBackend).items()):
    if inspect.isfunction(_fn) and not _name.startswith("__"):
        setattr(DynamoDBBackend, _name, _serialised(_fn))

if __name__ == "__main__":
    main()
