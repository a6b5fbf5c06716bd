"""The code's heads as Alembic records them, and where an archive's upgrade starts
from for each (:mod:`guest_backup.ops.schema`'s plan)."""

from __future__ import annotations


def plan_starts(script, revisions: set[str], starts: dict) -> None:
    """Where each of the code's heads starts from (into ``starts``, in the order the
    upgrade goes), for a database at ``revisions``. A head's ancestors include what it
    ``depends_on``; a head implied by another goes first, and what one upgrade reaches
    counts for the next (else ``0001:tag`` would run the host's ``0002`` a second
    time after ``0001:0002``)."""
    lineage = {head: {r.revision for r in script.iterate_revisions(head, "base")}
               for head in script.get_heads()}
    reached = set(revisions)
    for rev in revisions:  # a recorded revision implies what it stands on
        reached |= {r.revision for r in script.iterate_revisions(rev, "base")}
    for head in sorted(lineage, key=lambda h: (len(lineage[h]), h)):
        on_branch = reached & lineage[head]
        starts[head] = _newest(script, on_branch) if on_branch else None
        reached |= lineage[head]


def recorded_heads(script) -> set[str]:
    """The heads of ``script`` without those another head depends on: Alembic
    records only the dependent one (a plugin's first revision that ``depends_on`` a
    host revision, as the hookspec advises). The host's ``schema_heads`` counts the
    same way; this layer may not import it."""
    heads = set(script.get_heads())
    below = set()
    for head in heads:
        below |= {r.revision for r in script.iterate_revisions(head, "base")} - {head}
    return heads - below


def _newest(script, revisions: set[str]) -> str:
    """Of revisions on one branch, the one every other is an ancestor of."""
    for rev in revisions:
        below = {r.revision for r in script.iterate_revisions(rev, "base")}
        if revisions <= below:
            return rev
    return sorted(revisions)[-1]
