"""Versioned SQL migrations of the ``geod`` schema (``NNNN_name.sql``, applied in order)."""
