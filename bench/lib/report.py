#!/usr/bin/python3
"""report.py RAW TSV

RAW: one sample per line, tab separated:
    case  metric  unit  better  shim  value
shim is "go" or "ours"; better is "lower" or "higher"; value is a number or
"NA:<reason>" (the case could not be measured for that shim).

Prints an aligned table (median, p95, mean per shim and the ratio of the
medians ours/Go) on stdout, in the order the metrics first appear in RAW, and
writes the same figures (plus n, min, max) to TSV (atomically, via TSV.tmp).
p95 is interpolated linearly between order statistics (numpy's default); with
fewer than 20 samples it is close to the maximum.
"""
import math
import os
import statistics
import sys

SHIMS = ("go", "ours")


def quantile(vals, q):
    s = sorted(vals)
    if not s:
        return math.nan
    h = (len(s) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (h - lo)


def fmt(x):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    a = abs(x)
    if a >= 1000:
        return "%.0f" % x
    if a >= 100:
        return "%.1f" % x
    if a >= 10:
        return "%.2f" % x
    if a >= 0.1:
        return "%.3f" % x
    if a == 0:
        return "0"
    return "%.4f" % x


def main():
    raw, tsv = sys.argv[1], sys.argv[2]
    order = []
    data = {}
    with open(raw) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 6:
                continue
            case, metric, unit, better, shim, value = parts
            key = (case, metric, unit, better)
            if key not in data:
                order.append(key)
                data[key] = {s: {"vals": [], "na": None} for s in SHIMS}
            slot = data[key].setdefault(shim, {"vals": [], "na": None})
            if value.startswith("NA:"):
                slot["na"] = slot["na"] or value[3:]
            else:
                try:
                    slot["vals"].append(float(value))
                except ValueError:
                    slot["na"] = slot["na"] or ("bad value " + value)

    rows = []
    tsv_rows = []
    for key in order:
        case, metric, unit, better = key
        st = {}
        for s in SHIMS:
            slot = data[key][s]
            v = slot["vals"]
            if v and not slot["na"]:
                st[s] = dict(n=len(v), median=statistics.median(v), p95=quantile(v, 0.95),
                             mean=statistics.fmean(v), min=min(v), max=max(v), na=None)
            else:
                st[s] = dict(n=len(v), median=None, p95=None, mean=None, min=None, max=None,
                             na=slot["na"] or "no samples")
        ratio = None
        if st["go"]["na"] is None and st["ours"]["na"] is None and st["go"]["median"]:
            ratio = st["ours"]["median"] / st["go"]["median"]
        cells = [case, metric, unit, better, "%d/%d" % (st["go"]["n"], st["ours"]["n"])]
        notes = []
        for s in SHIMS:
            if st[s]["na"] is not None:
                cells += ["n/a (%s)" % st[s]["na"], "-", "-"]
                notes.append("%s: n/a (%s)" % (s, st[s]["na"]))
            else:
                cells += [fmt(st[s]["median"]), fmt(st[s]["p95"]), fmt(st[s]["mean"])]
        cells.append("%.2f" % ratio if ratio is not None else "-")
        rows.append(cells)
        t = [case, metric, unit, better]
        for s in SHIMS:
            for k in ("n", "median", "p95", "mean", "min", "max"):
                x = st[s][k]
                t.append("" if x is None else ("%d" % x if k == "n" else "%.6g" % x))
        t.append("" if ratio is None else "%.4f" % ratio)
        t.append("; ".join(notes))
        tsv_rows.append(t)

    head = ["case", "metric", "unit", "better", "n go/ours", "Go median", "Go p95", "Go mean",
            "ours median", "ours p95", "ours mean", "ours/Go"]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    left = {0, 1, 2, 3}

    def line(cells):
        out = []
        for i, c in enumerate(cells):
            out.append(c.ljust(widths[i]) if i in left else c.rjust(widths[i]))
        return "  ".join(out).rstrip()

    print(line(head))
    print(line(["-" * w for w in widths]))
    prev = None
    for r in rows:
        if prev is not None and r[0] != prev:
            print()
        prev = r[0]
        print(line(r))

    thead = ["case", "metric", "unit", "better"]
    for s in SHIMS:
        thead += ["%s_%s" % (s, k) for k in ("n", "median", "p95", "mean", "min", "max")]
    thead += ["ratio_ours_go_median", "note"]
    tmp = tsv + ".tmp"
    d = os.path.dirname(os.path.abspath(tsv))
    os.makedirs(d, exist_ok=True)
    with open(tmp, "w") as f:
        f.write("\t".join(thead) + "\n")
        for t in tsv_rows:
            f.write("\t".join(t) + "\n")
    os.replace(tmp, tsv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
