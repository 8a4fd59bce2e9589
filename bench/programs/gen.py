"""Generates the inputs of the real-program workloads of scripts/bench-preload.sh.

Usage:
  gen.py gcc DIR FILES SEED   FILES C sources (DIR/unitNNN.c), each a few dozen functions with
                              loops, switches, structs and inlining candidates, so that
                              `gcc -O2` spends its time in the optimiser's data structures
  gen.py z3 FILE PROBLEMS SEED  an SMT-LIB file of PROBLEMS independent bit-vector factoring
                              problems (x * y = p * q for two random primes, x <= y), each in
                              its own push/pop, so the answers are unique and z3's output can
                              be compared between allocators
The output depends only on the arguments.
"""
import os
import random
import sys


def gen_gcc(out_dir, files, seed):
    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    for f in range(files):
        lines = ["#include <stddef.h>", "#include <string.h>", ""]
        lines.append("struct rec%d { int a, b; long c; double d; char name[16]; struct rec%d *next; };" % (f, f))
        nfun = 40
        for i in range(nfun):
            kind = rng.randrange(4)
            name = "u%d_f%d" % (f, i)
            if kind == 0:
                k = rng.randrange(3, 9)
                cases = "\n".join(
                    "        case %d: acc = acc * %d + v[i] %s %d; break;" % (c, rng.randrange(2, 99), rng.choice("+-^|&"), rng.randrange(1, 1000))
                    for c in range(k))
                lines.append("""static long %s(const int *v, size_t n, long acc) {
    for (size_t i = 0; i < n; i++) {
        switch ((v[i] ^ (int)i) %% %d) {
%s
        default: acc ^= (long)i << (i & 7);
        }
    }
    return acc;
}""" % (name, k, cases))
            elif kind == 1:
                lines.append("""static double %s(struct rec%d *r, int depth) {
    double s = 0;
    for (int d = 0; r && d < depth; d++, r = r->next) {
        s += r->d * %d.5 + r->a - r->b;
        if (r->c %% %d == 0) s = s / 2 + (double)strlen(r->name);
        for (int j = 0; j < %d; j++) s += (double)(r->a * j %% (%d + d));
    }
    return s;
}""" % (name, f, rng.randrange(1, 50), rng.randrange(2, 17), rng.randrange(2, 12), rng.randrange(3, 40)))
            elif kind == 2:
                m = rng.randrange(4, 12)
                lines.append("""static void %s(int m[%d][%d], int k) {
    for (int i = 0; i < %d; i++)
        for (int j = 0; j < %d; j++) {
            int t = m[i][j] * k + m[j][i] - %d;
            m[i][j] = t > %d ? t - %d : t + i * j;
        }
}""" % (name, m, m, m, m, rng.randrange(100), rng.randrange(1000), rng.randrange(500)))
            else:
                a, b = rng.randrange(i) if i else 0, rng.randrange(i) if i else 0
                calls = []
                for c in (a, b):
                    nm = "u%d_f%d" % (f, c)
                    calls.append(nm)
                lines.append("""static unsigned %s(unsigned x, unsigned y) {
    unsigned h = x * 2654435761u ^ y;
    for (unsigned i = 0; i < (y & 31u); i++) h = (h << 5 | h >> 27) + i * %du;
    return h %% %du + (x > y ? x - y : y - x);
}""" % (name, rng.randrange(1, 1 << 20), rng.randrange(2, 1 << 16)))
        # one exported function keeps every static one alive
        body = ["    long acc = seed;", "    int v[64]; int m[12][12]; struct rec%d r[4];" % f,
                "    memset(v, 0, sizeof v); memset(m, 0, sizeof m); memset(r, 0, sizeof r);",
                "    for (int i = 0; i < 64; i++) v[i] = (int)(seed * 31 + i);",
                "    for (int i = 0; i < 3; i++) r[i].next = &r[i + 1];"]
        text = "\n".join(lines)
        for i in range(nfun):
            name = "u%d_f%d" % (f, i)
            if ("long %s(" % name) in text:
                body.append("    acc += %s(v, 64, acc);" % name)
            elif ("double %s(" % name) in text:
                body.append("    acc += (long)%s(r, 4);" % name)
            elif ("void %s(" % name) in text:
                body.append("    %s((int (*)[%s])m, (int)acc);" % (name, text.split("void %s(int m[" % name)[1].split("]")[0]))
            else:
                body.append("    acc += %s((unsigned)acc, %du);" % (name, i))
        lines.append("long unit%d_run(long seed) {\n%s\n    return acc;\n}" % (f, "\n".join(body)))
        with open(os.path.join(out_dir, "unit%03d.c" % f), "w") as fh:
            fh.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, "main.c"), "w") as fh:
        fh.write("#include <stdio.h>\n")
        for f in range(files):
            fh.write("long unit%d_run(long);\n" % f)
        fh.write("int main(void) {\n    long acc = 0;\n")
        for f in range(files):
            fh.write("    acc += unit%d_run(acc);\n" % f)
        fh.write('    printf("%ld\\n", acc);\n    return 0;\n}\n')


def is_prime(n):
    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def gen_z3(path, problems, seed):
    rng = random.Random(seed)
    primes = [n for n in range(3000, 12000) if is_prime(n)]
    bits = 16
    out = ["(set-logic QF_BV)"]
    for _ in range(problems):
        p, q = sorted(rng.sample(primes, 2))
        out.append("(push 1)")
        out.append("(declare-const x (_ BitVec %d))(declare-const y (_ BitVec %d))" % (bits, bits))
        out.append("(assert (= (bvmul ((_ zero_extend %d) x) ((_ zero_extend %d) y)) (_ bv%d %d)))" % (bits, bits, p * q, 2 * bits))
        out.append("(assert (bvugt x (_ bv1 %d)))(assert (bvule x y))" % bits)
        out.append("(check-sat)(get-value (x y))(pop 1)")
    with open(path, "w") as fh:
        fh.write("\n".join(out) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] not in ("gcc", "z3"):
        sys.exit(__doc__)
    kind, target, count, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    (gen_gcc if kind == "gcc" else gen_z3)(target, count, seed)
