"""What the REST API and the web console share, owned by neither: who is calling and
may they (``security``: the ``require`` dependency, principals, sessions' CSRF checks,
rate limits, the audit helper) and the service a request works with (``deps``).

``api`` and ``console`` import from here and never from each other.
"""
