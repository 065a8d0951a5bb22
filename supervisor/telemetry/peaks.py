"""Measured memory peaks of earlier runs, for the host memory broker's predictions.

The peak of a finished run is the largest RSS the daemon sampled for its whole
process tree (``geod.v_memory_by_stage``). Runs of the same config fingerprint
are the best guide; runs on the same inputs (datasets and grid) the next best.
Both fingerprints are in the run summary the daemon stores in ``geod.runs``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import psycopg2

from supervisor.telemetry.writer import CONNECT_TIMEOUT

_PEAK_SQL = """
SELECT r.id, max(m.peak_rss)
FROM geod.runs r
JOIN geod.v_memory_by_stage m ON m.run_key = r.run_key
WHERE r.state = 'done'
  AND (r.summary->>'config_fingerprint' = %(config)s
       OR r.summary->>'data_fingerprint' = %(data)s)
GROUP BY r.run_key, r.id, r.finished, r.summary->>'config_fingerprint'
ORDER BY (r.summary->>'config_fingerprint' = %(config)s) DESC, r.finished DESC
LIMIT 1
"""


def peak_lookup(url: str) -> Callable[[str, str], tuple[int, str] | None]:
    """A lookup bound to ``url`` (a new short connection per call: submissions are rare)."""

    def lookup(config: str, data: str) -> tuple[int, str] | None:
        conn = psycopg2.connect(url, connect_timeout=CONNECT_TIMEOUT)
        with contextlib.closing(conn), conn.cursor() as cur:
            cur.execute(_PEAK_SQL, {"config": config, "data": data})
            row = cur.fetchone()
        if row is None or row[1] is None:
            return None
        return int(row[1]), str(row[0])

    return lookup
