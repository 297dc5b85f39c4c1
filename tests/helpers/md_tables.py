"""Reading the generated markdown back in report tests."""


def table_rows(markdown: str) -> list[list[str]]:
    """Cells of the first markdown table's body rows in ``markdown``."""
    rows, started = [], False
    for line in markdown.splitlines():
        if line.startswith("|"):
            if started and not line.startswith("|:") and not line.startswith("|-"):
                rows.append([c.strip() for c in line.strip("|").split("|")])
            started = True
        elif started:
            break
    return rows
