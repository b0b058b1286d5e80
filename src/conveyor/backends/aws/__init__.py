"""The AWS engine: SQS delivers, DynamoDB is the record of truth.

* ``engine.py``: the tasks (``AWSBackend``, both halves of the contract);
* ``auth.py``: the auth store, in the engine's auxiliary table;
* ``resources.py``: the boto3 clients and the tables and queues the engine uses;
* ``provision.py``: everything ``conveyor aws init`` creates (those, the buckets,
  the upload-events queue and the input bucket's notification).
"""

from conveyor.backends.aws.engine import AWSBackend
from conveyor.backends.aws.resources import DEFAULT_MAX_RECEIVES, ensure_resources

__all__ = ["DEFAULT_MAX_RECEIVES", "AWSBackend", "ensure_resources"]
