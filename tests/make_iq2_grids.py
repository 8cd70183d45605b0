#!/usr/bin/env python3
"""make_iq2_grids.py - writes kernels/quants_iq2_grids.c, the grids of IQ2_XXS, IQ2_XS, IQ2_S.

usage: make_iq2_grids.py LLAMA_CPP_SOURCE_DIR OUT.c

The grids are facts of the formats: each entry is 8 values, each one of 3
magnitudes.  llama.cpp states them twice, as 2-bit level indices
(kgrid_2bit_256/512/1024 in ggml/src/ggml-quants.c, value i = bits 2i..2i+1)
and expanded to bytes (iq2xxs_grid / iq2xs_grid / iq2s_grid in
ggml/src/ggml-common.h, level l -> byte 8, 25, 43).  This script reads both,
checks that they agree, that index 3 never occurs, that each is sorted and
without repeats, and writes the index form (one uint16 per entry) as C: the
kernels expand it.
"""
import re
import sys

LEVELS = [8, 25, 43]
GRIDS = [("256", "iq2xxs_grid", "moe_iq2xxs_grid", "IQ2_XXS"),
         ("512", "iq2xs_grid", "moe_iq2xs_grid", "IQ2_XS"),
         ("1024", "iq2s_grid", "moe_iq2s_grid", "IQ2_S")]


def numbers(text, pattern):
    m = re.search(pattern, text, re.S)
    if m is None:
        sys.exit(f"make_iq2_grids.py: {pattern} not found")
    return [int(v, 0) for v in re.findall(r"0x[0-9a-fA-F]+|\d+", m.group(1))]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src = open(f"{sys.argv[1]}/ggml/src/ggml-quants.c").read()
    common = open(f"{sys.argv[1]}/ggml/src/ggml-common.h").read()
    out = ["/*",
           " * quants_iq2_grids.c - the grids of IQ2_XXS (256 entries), IQ2_XS (512) and",
           " * IQ2_S (1024), facts of the formats: entry k is 8 values, value i the",
           " * level index (bits 2i..2i+1 of the entry) into moe_iq2_levels.  Written by",
           " * tests/make_iq2_grids.py from llama.cpp's two statements of them (checked",
           " * to agree, sorted, no repeats, no level index 3); do not edit by hand.",
           " */",
           '#include "kernels/quants.h"', ""]
    for n, wide, name, tname in GRIDS:
        idx = numbers(src, r"kgrid_2bit_" + n + r"\s*\[\d+\]\s*=\s*\{(.*?)\};")
        exp = numbers(common, r"GGML_TABLE_BEGIN\(uint64_t, " + wide + r", \d+\)(.*?)GGML_TABLE_END")
        if len(idx) != int(n) or len(exp) != int(n):
            sys.exit(f"{tname}: {len(idx)} / {len(exp)} entries")
        for k in range(int(n)):
            if any((idx[k] >> 2 * i) & 3 == 3 for i in range(8)):
                sys.exit(f"{tname}: entry {k} has level index 3")
            if sum(LEVELS[(idx[k] >> 2 * i) & 3] << (8 * i) for i in range(8)) != exp[k]:
                sys.exit(f"{tname}: entry {k} differs between the two forms")
        if idx != sorted(set(idx)):
            sys.exit(f"{tname}: not sorted or repeats")
        out.append(f"/* {tname} */")
        out.append(f"const uint16_t {name}[{n}] = {{")
        for k in range(0, int(n), 10):
            out.append("    " + ", ".join(f"0x{v:04x}" for v in idx[k:k + 10]) + ",")
        out.append("};")
        out.append("")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
