#!/usr/bin/env python3
"""What tests/lab/lab.sh's elastic cases read from a job's files.

  elastic_report.py final METRICS.json KEY      the last "final" event's KEY
  elastic_report.py worlds METRICS.json         "4 -> 3 at step 31 (0.64 s); ..."
  elastic_report.py gaps FAULTS.log PROGRESS.log
      for each fault that stops work (not linkup, cont, revive), the seconds
      from it to rank 0's next completed step: "kill rank=2: 0.81 s; ..."
"""
import json
import re
import sys


def events(path, kind):
    out = []
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            e = json.loads(line)
            if e.get("event") == kind:
                out.append(e)
    return out


def main():
    what = sys.argv[1]
    if what == "final":
        print(events(sys.argv[2], "final")[-1][sys.argv[3]])
    elif what == "worlds":
        print("; ".join("%d -> %d at step %d (%.2f s)" % (e["from"], e["to"], e["step"], e["form_s"])
                        for e in events(sys.argv[2], "world")))
    elif what == "gaps":
        prog = []
        for line in open(sys.argv[3]):
            m = re.match(r"\+([0-9.]+)s step (\d+)", line)
            if m:
                prog.append((float(m.group(1)), int(m.group(2))))
        out = []
        for line in open(sys.argv[2]):
            m = re.match(r"\+([0-9.]+)s \S+ @\S+ (\w+ [^\s:]+)", line)
            if not m or m.group(2).split()[0] in ("linkup", "cont", "revive"):
                continue
            t = float(m.group(1))
            before = max([s for tt, s in prog if tt <= t], default=0)
            nxt = [tt for tt, s in prog if tt > t and s > before]
            out.append("%s: %s" % (m.group(2), "%.2f s" % (nxt[0] - t) if nxt else "never"))
        print("; ".join(out))
    else:
        sys.exit("usage: elastic_report.py final|worlds|gaps ...")


if __name__ == "__main__":
    main()
