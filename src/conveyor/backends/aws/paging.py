"""DynamoDB's reads that come in pieces, read whole.

A Query or Scan answers at most 1 MB and says where to go on
(``LastEvaluatedKey``); a BatchGetItem takes 100 keys and may hand some back
unread (``UnprocessedKeys``) when the table is busy.  Every store on the AWS
engine (tasks, auth, events) reads this way, so the loops live here once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Item = dict[str, Any]

BATCH_GET_KEYS = 100  # DynamoDB's limit per BatchGetItem


def items(call: Callable[..., Any], **kwargs: Any) -> Iterator[Item]:
    """Every item ``call`` (a client's ``query`` or ``scan``) answers, page after page."""
    while True:
        resp = call(**kwargs)
        yield from resp.get("Items", [])
        last = resp.get("LastEvaluatedKey")
        if not last:
            return
        kwargs["ExclusiveStartKey"] = last


def batch_get(ddb: Any, table: str, keys: list[Item]) -> list[Item]:
    """Consistent reads of ``keys`` from ``table``, unprocessed keys asked again."""
    got: list[Item] = []
    for i in range(0, len(keys), BATCH_GET_KEYS):
        todo: list[Item] = keys[i : i + BATCH_GET_KEYS]
        while todo:
            resp = ddb.batch_get_item(RequestItems={table: {"Keys": todo, "ConsistentRead": True}})
            got.extend(resp.get("Responses", {}).get(table, []))
            left: Any = resp.get("UnprocessedKeys") or {}
            todo = list(left.get(table, {}).get("Keys", []))
    return got
