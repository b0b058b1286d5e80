"""Talking to a Conveyor API over HTTP: the client side of its REST API.

* ``connection``: a remote worker's one connection to the API (reuse, timeouts,
  retries, its rotating credential), errors turned back into domain errors;
* ``queue``: :class:`~conveyor.remote.queue.RemoteQueue`, the ``WorkerQueue`` a
  remote worker claims from (``https://API``), each call one request to
  ``/api/worker/v1``;
* ``storage``: the ``BlobStore`` of a remote worker, the API host's buckets reached
  through the API (or presigned URLs);
* ``credential``: enrolling a worker and keeping its credential (a 0600 file,
  rotated before it expires);
* ``client``: the CLI's client of the REST API.

Nothing here is imported by the API's side; the factories (``open_queue``,
``open_storage``) open the queue and storage for an ``https://`` URL.
"""
