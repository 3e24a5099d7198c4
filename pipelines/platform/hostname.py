"""The host name Airflow records for a task instance, so each Celery worker shows under its own name.

Airflow 3.3 reads ``[core] hostname_callable`` as a dotted path (``package.module.function``, resolved by
``import_string``'s ``rsplit(".", 1)``; the ``module:attr`` form is not accepted) and calls it with no
argument, in the Task SDK's runner (``airflow.sdk.api.client.get_hostname``) when a task starts and on every
heartbeat. Set ``AIRFLOW__CORE__HOSTNAME_CALLABLE=pipelines.platform.hostname.worker_hostname``.
"""

from __future__ import annotations

import os
import socket


def worker_hostname() -> str:
    """``CITYLAKE_HOSTNAME`` when set (two workers in containers or on one machine get distinct names),
    else the machine's fully qualified name (``socket.getfqdn()``)."""
    return os.environ.get("CITYLAKE_HOSTNAME", "").strip() or socket.getfqdn()
