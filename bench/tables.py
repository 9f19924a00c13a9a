"""What the bench scripts' table makers share (imported with PYTHONPATH=bench)."""
import statistics


def median_range(xs, digits, empty="n/a"):
    """The median of the figures that are there, with their range in
    brackets when there are several: `1,234 (1,100–1,300)`."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return empty
    m = statistics.median(xs)
    if len(xs) == 1:
        return f"{m:,.{digits}f}"
    return f"{m:,.{digits}f} ({min(xs):,.{digits}f}–{max(xs):,.{digits}f})"
