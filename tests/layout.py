#!/usr/bin/env python3
"""layout.py - holds the source tree to the layout table of docs/DESIGN.md.

usage: layout.py SOURCE_DIR [--worker-bin PATH]

The table (the first one under "## Layout") names every code folder, the one
public header it offers, and the folders it may include.  Checked here:

  - every folder holding C sources is in the table, and the table's "may
    include" relation has no cycle;
  - every #include "F/..." of a file in folder G is of G itself, or of a
    folder G may include and then only of F's public header (tests/ may
    include anything: they are white-box);
  - no file-level include cycle;
  - each folder's CMakeLists.txt links only moe_ libraries of folders it may
    include;
  - every .c/.h file opens with a comment that names it ("/* name.c - ...");
  - no source comment names an issue number (issues end; code stays);
  - with --worker-bin: the moemesh-worker program needs neither OpenBLAS nor
    libmicrohttpd and carries no benchmark or server symbol.

Exit 0 when everything holds, 1 with one line per violation otherwise.
"""
import os
import re
import subprocess
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
ISSUE = re.compile(r'\bissues?\s*#?\s*\d+\b', re.I)
LIBS = {
    "moe_core": "core", "moe_jinja": "jinja", "moe_kernels": "kernels", "moe_model": "model",
    "moe_pb": "proto", "moe_proto": "proto", "moe_worker": "worker",
    "moe_coordinator": "coordinator", "moe_server": "server",
    "moe_devtools": "devtools", "moe_bench": "bench", "moe_cli": "cli",
    "moe_grammar": "grammar", "moe_jinja": "jinja",
}


def read_table(design):
    """{folder: (public header or None, set of folders or 'all')}"""
    text = open(design, encoding="utf-8").read()
    at = text.find("\n## Layout")
    if at < 0:
        sys.exit("layout.py: docs/DESIGN.md has no '## Layout' section")
    rows = {}
    for line in text[at + 1:].splitlines()[1:]:
        if line.startswith("## "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        folder = cells[0].strip("`").rstrip("/")
        header = cells[2].strip("`") if cells[2].startswith("`") else None
        may = cells[3]
        if may == "all":
            deps = "all"
        elif may in ("", "-", "—"):
            deps = set()
        else:
            deps = {d.strip().strip("`").rstrip("/") for d in may.split(",")}
        rows[folder] = (header, deps)
    if not rows:
        sys.exit("layout.py: no table rows under '## Layout' in docs/DESIGN.md")
    return rows


def source_files(root):
    out = subprocess.run(["git", "-C", root, "ls-files", "--cached", "--others",
                          "--exclude-standard", "*.c", "*.h"],
                         capture_output=True, text=True, check=True).stdout.split()
    return sorted(f for f in out if os.path.exists(os.path.join(root, f)))


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    root = args[0]
    worker_bin = args[args.index("--worker-bin") + 1] if "--worker-bin" in args else None
    table = read_table(os.path.join(root, "docs", "DESIGN.md"))
    bad = []

    def may(g, f):
        deps = table[g][1]
        return f == g or deps == "all" or f in deps

    # the table's relation is acyclic (folders listed as "all" are sinks)
    state = {}

    def visit(f, path):
        if state.get(f) == 1:
            bad.append("DESIGN layout: folder cycle " + " -> ".join(path + [f]))
            return
        if state.get(f) == 2:
            return
        state[f] = 1
        deps = table[f][1]
        for d in ([] if deps == "all" else sorted(deps)):
            if d not in table:
                bad.append(f"DESIGN layout: {f}/ may include {d}/, which is not in the table")
            else:
                visit(d, path + [f])
        state[f] = 2

    for f in table:
        visit(f, [])

    files = source_files(root)
    graph = {}
    for path in files:
        folder = path.split("/")[0]
        if "/" not in path:
            bad.append(f"{path}: a source file outside every folder")
            continue
        if folder not in table:
            bad.append(f"{path}: folder {folder}/ is not in DESIGN's layout table")
            continue
        text = open(os.path.join(root, path), encoding="utf-8", errors="replace").read()
        name = os.path.basename(path)
        if not re.match(r"/\*\s*(\*\s*)?" + re.escape(name) + r" - ", text):
            bad.append(f"{path}: does not open with a comment '/* {name} - what it owns'")
        for m in ISSUE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            bad.append(f"{path}:{line}: names an issue ('{m.group(0)}')")
        graph[path] = []
        for inc in INCLUDE.findall(text):
            if "/" not in inc:  # same folder, by file name
                target = os.path.join(os.path.dirname(path), inc)
            else:
                target = inc
            graph[path].append(target)
            f = inc.split("/")[0] if "/" in inc else folder
            if folder == "tests":
                continue
            if f not in table:
                bad.append(f"{path}: includes \"{inc}\" of unknown folder {f}/")
            elif not may(folder, f):
                bad.append(f"{path}: {folder}/ may not include {f}/ (\"{inc}\")")
            elif f != folder and inc != table[f][0]:
                bad.append(f"{path}: includes \"{inc}\"; outside {f}/ only its public "
                           f"header {table[f][0]} may be included")

    # file-level include cycles
    colour = {}

    def dfs(p, stack):
        colour[p] = 1
        for q in graph.get(p, []):
            if q not in graph:
                continue  # generated or system header
            if colour.get(q) == 1:
                bad.append("include cycle: " + " -> ".join(stack[stack.index(q):] + [q]))
            elif colour.get(q) is None:
                dfs(q, stack + [q])
        colour[p] = 2

    for p in graph:
        if colour.get(p) is None:
            dfs(p, [p])

    # link dependencies
    for folder in table:
        cm = os.path.join(root, folder, "CMakeLists.txt")
        if folder == "tests" or not os.path.exists(cm):
            continue
        text = re.sub(r"#.*", "", open(cm, encoding="utf-8").read())
        for call in re.findall(r"target_link_libraries\s*\(([^)]*)\)", text):
            for lib in re.findall(r"\bmoe_[a-z]+\b", call.split(None, 1)[1] if " " in call
                                  else ""):
                g = LIBS.get(lib)
                if g is not None and not may(folder, g):
                    bad.append(f"{folder}/CMakeLists.txt: links {lib} ({g}/), which "
                               f"{folder}/ may not use")

    if worker_bin:
        dyn = subprocess.run(["readelf", "-d", worker_bin], capture_output=True,
                             text=True).stdout
        if "NEEDED" not in dyn:
            bad.append(f"{worker_bin}: readelf shows no NEEDED entries (not a program?)")
        for lib in ("libopenblas", "libmicrohttpd"):
            if lib in dyn:
                bad.append(f"{worker_bin}: needs {lib}")
        syms = subprocess.run(["nm", worker_bin], capture_output=True, text=True).stdout
        if not re.search(r"\bmoe_worker_run\b", syms):
            bad.append(f"{worker_bin}: nm does not show moe_worker_run (stripped?)")
        for prefix in ("moe_bench_", "moe_http_", "moe_engine_", "moe_cluster_",
                       "moe_synth"):
            if re.search(r"\b" + prefix, syms):
                bad.append(f"{worker_bin}: carries {prefix}* symbols")

    for b in bad:
        print(b)
    print(f"layout: {len(files)} files, {len(table)} folders, "
          f"{len(bad)} violation(s)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
