# Allocation-heavy python3 workload for scripts/bench-preload.sh: dicts, strings, a json round
# trip. Usage: python3 work.py [N] [SEED] (run with PYTHONMALLOC=malloc so that every object
# comes from malloc). Prints a checksum that depends only on the arguments.
import json, sys, zlib, random
n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
rng = random.Random(seed)
words = ["w%d_%s" % (i, "x" * (i % 17)) for i in range(5000)]
crc = 0
for rnd in range(4):
    recs = []
    for i in range(n):
        d = {"id": i, "name": rng.choice(words) + str(i),
             "tags": [rng.choice(words) for _ in range(rng.randrange(1, 8))],
             "score": rng.random(), "nested": {"a": i * 3, "b": str(i) * (i % 5)}}
        recs.append(d)
    text = json.dumps(recs, sort_keys=True)
    back = json.loads(text)
    idx = {}
    for d in back:
        idx.setdefault(d["name"][:4], []).append(d["id"])
    s = "|".join("%s:%d" % (k, len(v)) for k, v in sorted(idx.items()))
    parts = text.split(",")
    joined = ",".join(p.upper() for p in parts[: len(parts) // 2])
    crc = zlib.crc32(text.encode(), crc)
    crc = zlib.crc32(s.encode(), crc)
    crc = zlib.crc32(joined.encode(), crc)
    del recs, back, idx, parts, joined, text
print("python n=%d checksum=%08x" % (n, crc))
