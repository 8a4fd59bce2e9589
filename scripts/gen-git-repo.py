#!/usr/bin/env python3
"""gen-git-repo.py - a deterministic `git fast-import` stream for a large repository.

Usage: scripts/gen-git-repo.py [--seed N] [--commits N] [--files N] | git fast-import --quiet

The history is a function of the arguments only: files of text lines under nested directories,
each commit editing a few of them (lines changed, inserted and deleted; now and then a file
added, removed or renamed), fixed authors and dates, a side branch merged back every 250
commits, a tag every 500. Used by scripts/preload-suite.sh (git gc, fsck, log, blame under
LD_PRELOAD).
"""
import argparse
import sys

WORDS = ("alloc free scope slab page heap stock limit charge close thread fork exec span "
         "segment cache class remote local decay trim report tenant request task").split()


class Rng:
    """splitmix64, so the stream does not depend on the Python version's random module."""

    def __init__(self, seed):
        self.s = seed & (2**64 - 1)

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & (2**64 - 1)
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
        return z ^ (z >> 31)

    def below(self, n):
        return self.next() % n


def line(rng):
    return " ".join(WORDS[rng.below(len(WORDS))] for _ in range(1 + rng.below(10)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--commits", type=int, default=4000)
    ap.add_argument("--files", type=int, default=600)
    a = ap.parse_args()
    rng = Rng(a.seed)
    out = sys.stdout.buffer
    files = {}
    for i in range(a.files):
        path = "src/d%d/e%d/file%d.txt" % (i % 13, i % 7, i)
        files[path] = [line(rng) for _ in range(20 + rng.below(300))]
    mark = 0
    time0 = 1700000000

    def blob(lines):
        nonlocal mark
        mark += 1
        data = ("\n".join(lines) + "\n").encode()
        out.write(b"blob\nmark :%d\ndata %d\n%s\n" % (mark, len(data), data))
        return mark

    def commit(ref, n, changes, parents, msg):
        nonlocal mark
        mark += 1
        who = ["Ada <ada@example.com>", "Linus <linus@example.com>", "Grace <grace@example.com>"][n % 3]
        when = b"%d +0000" % (time0 + n * 3600)
        m = msg.encode()
        out.write(b"commit %s\nmark :%d\nauthor %s %s\ncommitter %s %s\ndata %d\n%s\n"
                  % (ref, mark, who.encode(), when, who.encode(), when, len(m), m))
        for i, p in enumerate(parents):
            out.write(b"%s :%d\n" % (b"from" if i == 0 else b"merge", p))
        for c in changes:
            out.write(c)
        out.write(b"\n")
        return mark

    # the first commit holds every file
    changes = [b"M 100644 :%d %s\n" % (blob(lines), p.encode()) for p, lines in sorted(files.items())]
    head = commit(b"refs/heads/main", 0, changes, [], "initial import of %d files" % len(files))
    side = None
    for n in range(1, a.commits):
        if n % 250 == 200:
            side = head  # the side branch starts here; main waits for its merge
            out.write(b"reset refs/heads/side\nfrom :%d\n\n" % head)
        on_side = side is not None
        ref = b"refs/heads/side" if on_side else b"refs/heads/main"
        changes = []
        paths = sorted(files)
        edited = sorted({paths[rng.below(len(paths))] for _ in range(1 + rng.below(4))})
        for p in edited:  # distinct: a file written twice in one commit leaves a dangling blob
            lines = files[p]
            for _ in range(1 + rng.below(8)):
                op = rng.below(3)
                k = rng.below(len(lines) + 1)
                if op == 0 and k < len(lines):
                    lines[k] = line(rng)
                elif op == 1:
                    lines.insert(k, line(rng))
                elif len(lines) > 5 and k < len(lines):
                    del lines[k]
            changes.append(b"M 100644 :%d %s\n" % (blob(lines), p.encode()))
        r = rng.below(100)
        if r == 0 and len(files) > 10:
            p = paths[rng.below(len(paths))]
            if p not in edited:  # deleting a file edited here would leave its blob dangling
                del files[p]
                changes.append(b"D %s\n" % p.encode())
        elif r == 1:
            p = "src/new/n%d.txt" % n
            files[p] = [line(rng) for _ in range(10 + rng.below(50))]
            changes.append(b"M 100644 :%d %s\n" % (blob(files[p]), p.encode()))
        elif r == 2:
            p = paths[rng.below(len(paths))]
            q = "src/moved/m%d.txt" % n
            files[q] = files.pop(p)
            changes.append(b"R %s %s\n" % (p.encode(), q.encode()))
        if on_side:
            side = commit(ref, n, changes, [side], "side change %d" % n)
        else:
            head = commit(ref, n, changes, [head], "change %d: edit %d file(s)" % (n, len(changes)))
        if side is not None and n % 250 == 249:
            # merge the side branch; the merge commit states the whole tree
            full = [b"deleteall\n"] + [b"M 100644 :%d %s\n" % (blob(l), p.encode()) for p, l in sorted(files.items())]
            head = commit(b"refs/heads/main", n, full, [head, side], "merge side at %d" % n)
            side = None
        if n % 500 == 0:
            out.write(b"tag v%d\nfrom :%d\ntagger Ada <ada@example.com> %d +0000\ndata 8\nrelease\n\n"
                      % (n // 500, head, time0 + n * 3600))
    out.write(b"reset refs/heads/main\nfrom :%d\n\ndone\n" % head)


if __name__ == "__main__":
    main()
