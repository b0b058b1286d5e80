"""The AWS engine's auth store: items in its auxiliary DynamoDB table (``pk`` + ``sk``).

* tokens: ``pk = "authtoken"``, ``sk = <id>``, the record as JSON in ``doc``
  (with the secrets granted to it) and ``revoked_at`` apart, so a revoke is one
  conditional update;
* secrets: ``pk = "authsecret"``, ``sk = <name>``, created with a condition;
* nonces: ``pk = "authnonce#<nonce>"``, created with a condition (single use),
  with a ``ttl`` attribute so DynamoDB's TTL can drop expired ones;
* logged-out sessions: ``pk = "authsession#<id>"``, with a ``ttl`` attribute so
  DynamoDB's TTL drops them once their cookie would have expired anyway;
* audit: ``pk = "audit"``, ``sk = <event id>`` (time-ordered), read newest first.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from conveyor.auth.models import AuditEvent, AuditPage, TokenRecord
from conveyor.auth.store import AuthStore
from conveyor.backends.aws.paging import items


def _s(v: str) -> dict[str, str]:
    return {"S": v}


def _conditional_failed(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class DynamoAuthStore(AuthStore):
    def __init__(self, client: Any, table: str) -> None:
        self._ddb = client
        self.table = table

    def _record(self, item: dict[str, Any]) -> TokenRecord:
        rec = TokenRecord.model_validate_json(item["doc"]["S"])
        if "revoked_at" in item:
            rec.revoked_at = datetime.fromisoformat(item["revoked_at"]["S"])
        return rec

    def put_token(self, record: TokenRecord) -> None:
        item: dict[str, Any] = {
            "pk": _s("authtoken"),
            "sk": _s(record.id),
            "doc": _s(record.model_dump_json(exclude={"revoked_at"})),
        }
        if record.worker_id:
            item["worker_id"] = _s(record.worker_id)
        if record.revoked_at:
            item["revoked_at"] = _s(record.revoked_at.isoformat())
        self._ddb.put_item(
            TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
        )

    def get_token(self, token_id: str) -> TokenRecord | None:
        got = self._ddb.get_item(
            TableName=self.table,
            Key={"pk": _s("authtoken"), "sk": _s(token_id)},
            ConsistentRead=True,
        )
        return self._record(got["Item"]) if "Item" in got else None

    def _query(self, pk: str, **extra: Any) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": _s(pk)},
            "ConsistentRead": True,
            **extra,
        }
        return list(items(self._ddb.query, **kwargs))

    def list_tokens(self) -> list[TokenRecord]:
        recs = [self._record(i) for i in self._query("authtoken")]
        return sorted(recs, key=lambda r: (r.created_at, r.id), reverse=True)

    def revoke_token(self, token_id: str, at: datetime) -> TokenRecord | None:
        try:
            self._ddb.update_item(
                TableName=self.table,
                Key={"pk": _s("authtoken"), "sk": _s(token_id)},
                UpdateExpression="SET revoked_at = :t",
                ConditionExpression="attribute_exists(pk) AND attribute_not_exists(revoked_at)",
                ExpressionAttributeValues={":t": _s(at.isoformat())},
            )
        except ClientError as exc:
            if not _conditional_failed(exc):
                raise
        return self.get_token(token_id)

    def revoke_worker(self, worker_id: str, at: datetime) -> int:
        n = 0
        for rec in self.list_tokens():
            if rec.worker_id == worker_id and rec.revoked_at is None:
                before = rec.revoked_at
                after = self.revoke_token(rec.id, at)
                if after is not None and before is None and after.revoked_at == at:
                    n += 1
        return n

    def secret(self, name: str, make: Callable[[], str]) -> str:
        key = {"pk": _s("authsecret"), "sk": _s(name)}
        try:
            self._ddb.put_item(
                TableName=self.table,
                Item={**key, "value": _s(make())},
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if not _conditional_failed(exc):
                raise
        got = self._ddb.get_item(TableName=self.table, Key=key, ConsistentRead=True)
        return str(got["Item"]["value"]["S"])

    def use_nonce(self, nonce: str, expires_at: datetime) -> bool:
        try:
            self._ddb.put_item(
                TableName=self.table,
                Item={
                    "pk": _s(f"authnonce#{nonce}"),
                    "sk": _s("nonce"),
                    "ttl": {"N": str(int(expires_at.timestamp()) + 60)},
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise
        return True

    def revoke_session(self, session_id: str, expires_at: datetime) -> None:
        self._ddb.put_item(
            TableName=self.table,
            Item={
                "pk": _s(f"authsession#{session_id}"),
                "sk": _s("revoked"),
                "ttl": {"N": str(int(expires_at.timestamp()) + 60)},
            },
        )

    def session_revoked(self, session_id: str) -> bool:
        got = self._ddb.get_item(
            TableName=self.table,
            Key={"pk": _s(f"authsession#{session_id}"), "sk": _s("revoked")},
            ConsistentRead=True,
        )
        return "Item" in got

    def add_audit(self, event: AuditEvent) -> None:
        self._ddb.put_item(
            TableName=self.table,
            Item={"pk": _s("audit"), "sk": _s(event.id), "doc": _s(event.model_dump_json())},
        )

    def list_audit(self, limit: int = 50, cursor: str | None = None) -> AuditPage:
        limit = max(1, min(1000, limit))
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": _s("audit")},
            "ConsistentRead": True,
            "ScanIndexForward": False,
            "Limit": limit + 1,
        }
        if cursor:
            kwargs["KeyConditionExpression"] = "pk = :pk AND sk < :c"
            kwargs["ExpressionAttributeValues"][":c"] = _s(cursor)
        events: list[AuditEvent] = []
        while len(events) <= limit:
            resp = self._ddb.query(**kwargs)
            events.extend(AuditEvent.model_validate_json(i["doc"]["S"]) for i in resp["Items"])
            if not resp.get("LastEvaluatedKey"):
                break
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        page = events[:limit]
        more = len(events) > limit
        return AuditPage(events=page, next_cursor=page[-1].id if more and page else None)
