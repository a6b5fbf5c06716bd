"""Selective restore: chosen registrations (with their guests) or whole trips
brought back from an archive (opened into a scratch database, see
:mod:`guest_backup.ops.browse`) into the live database, previewed first.

- :func:`plan_selection` compares the archive's rows with today's and says, row
  by row, what will be inserted, overwritten or left, and why (the preview,
  :meth:`Plan.to_dict`);
- :func:`apply_plan` does exactly that, in one transaction while the site keeps
  serving, after checking that today's rows are still as previewed (else
  :class:`SelectionChanged`, nothing written);
- :func:`restore_selection` is both, with the erasure ledger, audited.

A row *exists* when today's row with its id holds the same record (a trip: same
``created_at``; a registration: same ``trip_id`` and ``created_at``; a guest:
same ``registration_id`` and ``created_at``, the parents' ids after remapping),
or, when that id is free or holds another record, a row under another id does
(a restore of it before, its id taken): the same parent and ``created_at`` and
also the same title (a trip), e-mail (a registration) or names (a guest), since
an import in one transaction gives many rows one ``created_at``; it is left and
mapped there, its children with it, never brought back twice. A row that does
not exist comes back with its id, or with a new id when another record holds
that id (the mapping is part of the plan, and its children follow it); a
registration comes back with its trip when the trip is gone. Existing
rows are left alone unless overwrite was chosen for that row (every column but
the id, the parent, ``created_at`` and the photo). Erased guests (the erasure
ledger, as a whole restore re-applies it, or erased values) never come back,
nor a registration all of whose guests were erased. Document photos are not in
system archives: an inserted guest keeps its photo's name only when the file is
still in the upload folder, and the preview says which. A value today's column
cannot hold (longer than its length, or a NUL) refuses the whole selection,
naming the row and the column.

Modules: ``selection_steps`` (the values), ``selection_rows`` (rows on both
databases), ``selection_plan`` (the preview), ``selection_apply`` (the restore).
"""

from __future__ import annotations

from guest_backup.ops.selection_apply import (ACTION, SelectionResult, apply_plan, photo_check,
                                              restore_selection)
from guest_backup.ops.selection_plan import plan_selection
from guest_backup.ops.selection_steps import (ACTIONS, PHOTO_NOTES, REASONS, Plan, Selection,
                                              SelectionChanged, SelectionError, Step)

__all__ = ["ACTION", "ACTIONS", "PHOTO_NOTES", "REASONS", "Plan", "Selection",
           "SelectionChanged", "SelectionError", "SelectionResult", "Step", "apply_plan",
           "photo_check", "plan_selection", "restore_selection"]
