"""Pictures of a run: the self-contained HTML report and static PNG/SVG charts (the `report` extra)."""
