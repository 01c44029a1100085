"""The mutation-testing report of ``make mutate``: ``docs/MUTATION.md`` from mutmut's results.

mutmut (configured in ``pyproject.toml``) writes, per mutated module, ``mutants/<path>.py.meta`` with the
exit code of the test run for every mutant, and ``mutants/<path>.py`` with each mutant as a function
``<name>__mutmut_<n>`` beside the original ``<name>__mutmut_orig``. This script reads both (no mutmut
import), shows each survivor as the one line it changes, subtracts the mutants listed as equivalent in
``docs/mutation-equivalent.txt`` (one line each: name, the changed line, why no test can tell it apart)
and writes the per-module kill ratios. An equivalence whose recorded line no longer matches the mutant
(the source moved on) is reported as stale and not subtracted.

A module whose every mutant was checked gets its kill ratio. A module not yet checked to the end (a full
run is hours on 2 cores) gets an *estimate* from the uniform random sample of its mutants listed in
``docs/mutation-sample.txt`` (``name`` per line; ``name || survived`` for a mutant that survived when the
sample was first run: it counts as missed even after a test was written for it, so that the estimate
describes the suite as sampled, not a suite fitted to the sample), with a one-sided 95% Clopper-Pearson
lower bound.

    python tests/mutation_report.py [--mutants mutants] [--out docs/MUTATION.md] [--min-ratio 0.9]

Exit status 1 unless every module's kill ratio (or, for a sampled module, the lower bound of its
estimate) over the non-equivalent mutants is at least ``--min-ratio``.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import json
import re
import sys
from collections import Counter
from datetime import date
from pathlib import Path

KILLED = {1, 3, -9, -11, 36, 24, -24, 152, 255, 37}  # a failing test, a timeout or a crash: the mutant was noticed
STATUS = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", None: "not checked"}
NAME = re.compile(r"^(?P<func>.+)__mutmut_(?P<n>orig|\d+)$")


def status(code) -> str:
    return "killed" if code in KILLED else STATUS.get(code, "suspicious")


def mutant_sources(py: Path, module: str) -> dict[str, str]:
    """``{"<module>.<function>__mutmut_<n>": source}`` for every mutant and original in a mutmut copy."""
    text = py.read_text(encoding="utf-8")
    lines = text.splitlines()
    out = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and NAME.match(node.name):
            out[f"{module}.{node.name}"] = "\n".join(lines[node.lineno - 1:node.end_lineno])
    return out


def changed_line(sources: dict[str, str], key: str) -> str:
    """The mutant's change as ``old  ->  new`` (first differing line, whitespace squeezed)."""
    func = NAME.match(key.rsplit(".", 1)[-1])["func"]
    orig = sources.get(f"{key.rsplit('.', 1)[0]}.{func}__mutmut_orig", "")
    new = sources.get(key, "")
    a = [" ".join(s.split()) for s in orig.splitlines()[1:]]  # the def line differs by name only
    b = [" ".join(s.split()) for s in new.splitlines()[1:]]
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            return f"{a[i1] if i1 < i2 else ''}  ->  {b[j1] if j1 < j2 else ''}"
    return "  ->  "


def read_equivalents(path: Path) -> dict[str, tuple[str, str]]:
    """``name || changed line || reason`` per line (``||`` never occurs in Python); ``#`` starts a comment line."""
    out = {}
    if path.is_file():
        for raw in path.read_text(encoding="utf-8").splitlines():
            if raw.strip() and not raw.lstrip().startswith("#"):
                name, line, reason = (p.strip() for p in raw.split(" || ", 2))
                out[name] = (line, reason)
    return out


def collect(mutants: Path, equivalents: dict[str, tuple[str, str]]):
    rows, survivors, equivalent, stale = [], [], [], []
    for meta in sorted(mutants.glob("**/*.py.meta")):
        module = ".".join(meta.relative_to(mutants).with_suffix("").with_suffix("").parts)
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        sources = mutant_sources(meta.with_suffix(""), module)
        count = Counter()
        for key, code in sorted(codes.items()):
            st = status(code)
            if st in ("survived", "no tests", "suspicious", "not checked"):
                line = changed_line(sources, key)
                if key in equivalents and equivalents[key][0] == line:
                    st = "equivalent"
                    equivalent.append((key, line, equivalents[key][1]))
                else:
                    if key in equivalents:
                        stale.append((key, equivalents[key][0], line))
                    survivors.append((key, st, line))
            count[st] += 1
        rows.append((module, count))
    return rows, survivors, equivalent, stale


def read_sample(path: Path) -> dict[str, bool]:
    """``{name: survived_first_pass}`` from the sample file (``#`` comment lines allowed)."""
    out = {}
    if path.is_file():
        for raw in path.read_text(encoding="utf-8").splitlines():
            if raw.strip() and not raw.lstrip().startswith("#"):
                name, _, mark = (p.strip() for p in raw.partition(" || "))
                out[name] = mark == "survived"
    return out


def sample_counts(mutants: Path, equivalents, sample: dict[str, bool]) -> dict[str, Counter]:
    """Per module, the verdicts of its sampled mutants (first-pass survivors count as survived)."""
    out: dict[str, Counter] = {}
    verdicts = {}
    for meta in sorted(mutants.glob("**/*.py.meta")):
        module = ".".join(meta.relative_to(mutants).with_suffix("").with_suffix("").parts)
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        sources = mutant_sources(meta.with_suffix(""), module)
        for key, code in codes.items():
            if key in sample:
                st = status(code)
                if st != "killed" and key in equivalents and equivalents[key][0] == changed_line(sources, key):
                    st = "equivalent"
                elif st == "killed" and sample[key]:
                    st = "survived"
                verdicts[key] = (module, st)
    for key, (module, st) in verdicts.items():
        out.setdefault(module, Counter())[st] += 1
    return out


def lower_bound(killed: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson lower bound of a binomial proportion."""
    if n == 0:
        return float("nan")
    if killed == 0:
        return 0.0
    from scipy.stats import beta
    return float(beta.ppf(1 - confidence, killed, n - killed + 1))


def judged(count: Counter) -> int:
    """Mutants with a verdict that counts: killed, or missed (survived, no test reached it, suspicious)."""
    return count["killed"] + count["survived"] + count["no tests"] + count["suspicious"]


def ratio(count: Counter) -> float:
    return count["killed"] / judged(count) if judged(count) else float("nan")


def render(rows, survivors, equivalent, stale, selection: str, sampled: dict[str, Counter]) -> str:
    total = sum((c for _, c in rows), Counter())
    cols = ["killed", "survived", "no tests", "not checked", "equivalent", "skipped"]
    lines = [
        "# Mutation testing",
        "",
        f"Generated by `make mutate` on {date.today().isoformat()} (`tests/mutation_report.py`; do not edit by hand).",
        "mutmut plants one small change at a time into the modules below and runs, per mutant, the tests of",
        f"`make test`'s fast tiers that reach the mutated function ({selection}). A mutant is *killed* when a",
        "test fails, times out or crashes. *Equivalent* mutants (no input can tell them apart from the original)",
        "are listed at the end with the reason and are not counted. Mutants of message wording are counted like",
        "any other (`tests/test_errors.py` checks the key phrase of each message, not every word).",
        "",
        f"**Kill ratio over the checked non-equivalent mutants: {ratio(total):.1%}** "
        f"({total['killed']} of {judged(total)}; {total['not checked']} mutants not checked yet"
        + ("; a module with unchecked mutants has an estimate from a random sample instead, below)."
           if total["not checked"] else ")."),
        "",
        "Complete modules (every mutant checked): "
        + (", ".join(f"`{m}` {ratio(c):.1%}" for m, c in rows if not c["not checked"]) or "none") + ".",
        "",
        "| module | mutants | " + " | ".join(cols) + " | kill ratio |",
        "| --- | ---: | " + " | ".join("---:" for _ in cols) + " | ---: |",
    ]
    for module, c in rows + [("**all**", total)]:
        lines.append(f"| {module} | {sum(c.values())} | " + " | ".join(str(c[k]) for k in cols)
                     + f" | {ratio(c):.1%} |")
    partial = [(m, sampled.get(m, Counter())) for m, c in rows if c["not checked"]]
    if partial:
        lines += ["", "## Estimates for the modules not checked to the end", "",
                  "A full run of these modules is hours on 2 cores. Each gets a uniform random sample of its mutants",
                  "(`docs/mutation-sample.txt`). A sampled mutant that survived its first run counts as missed even",
                  "if a test written afterwards kills it now, so the estimate describes the suite as it was sampled.",
                  "The bound is a one-sided 95% Clopper-Pearson lower bound on the kill ratio of the module.", "",
                  "| module | sampled | killed | missed | not run yet | equivalent | estimate | 95% lower bound |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for m, c in partial:
            n, k = judged(c), c["killed"]
            lines.append(f"| {m} | {sum(c.values())} | {k} | {n - k} | {c['not checked']} | {c['equivalent']} | "
                         f"{ratio(c):.1%} | {lower_bound(k, n):.1%} |")
    lines += ["", "## Survivors", "",
              "Each is a change no test noticed: the next test to write, or an equivalence to argue.", ""]
    lines += [f"- `{k}` ({st}): `{ln}`" for k, st, ln in survivors if st != "not checked"] or ["None."]
    lines += ["", "## Equivalent mutants", ""]
    lines += [f"- `{k}`: `{ln}`: {why}" for k, ln, why in equivalent] or ["None."]
    if stale:
        lines += ["", "## Stale equivalences (the source changed; re-argue or delete)", ""]
        lines += [f"- `{k}`: recorded `{old}`, now `{new}`" for k, old, new in stale]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mutants", type=Path, default=Path("mutants"))
    ap.add_argument("--equivalent", type=Path, default=Path("docs/mutation-equivalent.txt"))
    ap.add_argument("--sample", type=Path, default=Path("docs/mutation-sample.txt"))
    ap.add_argument("--out", type=Path, default=Path("docs/MUTATION.md"))
    ap.add_argument("--min-ratio", type=float, default=0.9)
    args = ap.parse_args(argv)
    if not any(args.mutants.glob("**/*.py.meta")):
        ap.error(f"no mutmut results under {args.mutants}/: run `make mutate` (it runs `mutmut run` first)")
    equivalents = read_equivalents(args.equivalent)
    rows, survivors, equivalent, stale = collect(args.mutants, equivalents)
    sampled = sample_counts(args.mutants, equivalents, read_sample(args.sample))
    import tomllib
    conf = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["mutmut"]
    selection = "`pytest " + " ".join(conf.get("pytest_add_cli_args_test_selection", [])) + "`"
    args.out.write_text(render(rows, survivors, equivalent, stale, selection, sampled), encoding="utf-8")
    total = sum((c for _, c in rows), Counter())
    missed = sum(st != "not checked" for _, st, _ in survivors)
    print(f"{args.out}: kill ratio {ratio(total):.1%} of {judged(total)} checked, {missed} missed, "
          f"{total['not checked']} not checked, {len(equivalent)} equivalent"
          + (f", {len(stale)} stale equivalences" if stale else ""))
    ok = True
    for module, c in rows:
        if c["not checked"]:
            sc = sampled.get(module, Counter())
            bound = lower_bound(sc["killed"], judged(sc))
            print(f"  {module}: sampled estimate {ratio(sc):.1%} (lower bound {bound:.1%}) of {judged(sc)}, "
                  f"{sc['not checked']} sampled not run yet")
            ok &= judged(sc) > 0 and not sc["not checked"] and bound >= args.min_ratio
        else:
            ok &= ratio(c) >= args.min_ratio
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
