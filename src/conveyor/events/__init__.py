"""Events out: what happened to a task, told to other programs (docs/events.md).

* ``model``: an event, a webhook endpoint (a subscription or one task's webhook), a
  delivery and its log;
* ``signing``: the Standard Webhooks signature (``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature``);
* ``policy``: which URLs a webhook may name and which addresses it may reach;
* ``dispatcher``: the thread that turns outbox rows into signed POSTs, with retries.

The outbox rows are written by each engine in the transaction of the state change
(``backends/<engine>/events.py`` and its migration); the port the dispatcher and the
service use is ``conveyor.backends.events_base.EventStore``.
"""
