"""The code's heads as Alembic records them (:func:`recorded_heads`)."""

from __future__ import annotations


def recorded_heads(script) -> set[str]:
    """The heads of ``script`` without those another head depends on: a plugin's
    revision that ``depends_on`` a host revision (as the hookspec advises) implies
    it, and Alembic records only the dependent one. Comparing with every head
    called such a database "behind" for good (503) and refused its archives. The
    backup plugin's ``ops/schema_heads.py`` counts the same way (it may not import
    the host)."""
    heads = set(script.get_heads())
    below: set[str] = set()
    for head in heads:  # a revision's lineage includes what it depends_on
        below |= {r.revision for r in script.iterate_revisions(head, "base")} - {head}
    return heads - below
