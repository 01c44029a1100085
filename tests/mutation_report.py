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

Exit status 1 unless every module's kill ratio over the non-equivalent mutants (for a sampled module,
the estimate of its latest round, from at least ``MIN_SAMPLE`` judged mutants) is at least ``--min-ratio``.
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

MIN_SAMPLE = 50  # judged mutants a sampled module needs before its estimate counts
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
    """Per module its verdict counts, the survivors, the equivalents and the stale equivalences, and
    ``verdicts`` ``{mutant: (module, verdict)}`` (equivalences applied) for the sample rounds."""
    rows, survivors, equivalent, stale, verdicts = [], [], [], [], {}
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
            verdicts[key] = (module, st)
        rows.append((module, count))
    return rows, survivors, equivalent, stale, verdicts


def read_sample(path: Path) -> list[dict[str, bool]]:
    """The sample's rounds, each ``{name: survived_first_pass}``: a line ``@round`` starts the next round
    (a fresh sample drawn after the tests that the previous round's survivors asked for); ``#`` comments."""
    rounds: list[dict[str, bool]] = [{}]
    if path.is_file():
        for raw in path.read_text(encoding="utf-8").splitlines():
            if raw.strip().startswith("@round"):
                rounds.append({})
            elif raw.strip() and not raw.lstrip().startswith("#"):
                name, _, mark = (p.strip() for p in raw.partition(" || "))
                rounds[-1][name] = mark == "survived"
    return [r for r in rounds if r]


def sample_counts(verdicts: dict[str, tuple[str, str]], sample: dict[str, bool]) -> dict[str, Counter]:
    """Per module, the verdicts (from :func:`collect`) of one round's sampled mutants; a first-pass
    survivor counts as survived even if it is killed now."""
    out: dict[str, Counter] = {}
    for key, survived_first in sample.items():
        if key in verdicts:
            module, st = verdicts[key]
            out.setdefault(module, Counter())["survived" if st == "killed" and survived_first else st] += 1
    return out


def latest_rounds(verdicts: dict[str, tuple[str, str]], rounds: list[dict[str, bool]]):
    """``(estimates, history)``: ``{module: (round, counts)}`` of the latest round that sampled each
    module, and ``[(round, module, counts)]`` of the rounds before it."""
    estimates: dict[str, tuple[int, Counter]] = {}
    history: list[tuple[int, str, Counter]] = []
    for i, rnd in enumerate(rounds, 1):
        for module, c in sorted(sample_counts(verdicts, rnd).items()):
            if module in estimates:
                history.append((*estimates[module][:1], module, estimates[module][1]))
            estimates[module] = (i, c)
    return estimates, history


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


def _sample_table(items) -> list[str]:
    out = ["| module | round | sampled | killed | missed | not run yet | equivalent | estimate | 95% lower bound |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m, i, c in items:
        n, k = judged(c), c["killed"]
        out.append(f"| {m} | {i} | {sum(c.values())} | {k} | {n - k} | {c['not checked']} | {c['equivalent']} | "
                   f"{ratio(c):.1%} | {lower_bound(k, n):.1%} |")
    return out


def render(rows, survivors, equivalent, stale, selection: str, sampled) -> str:
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
        f"**Kill ratio over the checked non-equivalent mutants, with today's tests: {ratio(total):.1%}** "
        f"({total['killed']} of {judged(total)}; {total['not checked']} mutants not checked yet"
        + ("; in a module not checked to the end the checked mutants are not a random sample, and include "
           "survivors re-run after their tests were written: read that module's sample estimate below)."
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
    estimates, history = sampled
    partial = [(m, *estimates.get(m, (0, Counter()))) for m, c in rows if c["not checked"]]
    if partial:
        lines += ["", "## Estimates for the modules not checked to the end", "",
                  "A full run of these modules is hours on 2 cores. Each gets a uniform random sample of its mutants",
                  "(`docs/mutation-sample.txt`). A sampled mutant that survived its first run counts as missed even",
                  "if a test written afterwards kills it now, so the estimate describes the suite as it was sampled.",
                  "Where a round's survivors led to new tests, a fresh sample (a later round, drawn from the mutants",
                  "no earlier round had) measures the suite with them; earlier rounds are kept in the history below.",
                  "The bound is a one-sided 95% Clopper-Pearson lower bound on the kill ratio of the module.", ""]
        lines += _sample_table([(m, i, c) for m, i, c in partial])
        if history:
            lines += ["", "History (earlier rounds of the same modules):", ""]
            lines += _sample_table([(m, i, c) for i, m, c in history])
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
    rows, survivors, equivalent, stale, verdicts = collect(args.mutants, equivalents)
    sampled = latest_rounds(verdicts, read_sample(args.sample))
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
            i, sc = sampled[0].get(module, (0, Counter()))
            bound = lower_bound(sc["killed"], judged(sc))
            print(f"  {module}: round {i} estimate {ratio(sc):.1%} (lower bound {bound:.1%}) of {judged(sc)}, "
                  f"{sc['not checked']} sampled not run yet")
            ok &= judged(sc) >= MIN_SAMPLE and not sc["not checked"] and ratio(sc) >= args.min_ratio
        else:
            ok &= ratio(c) >= args.min_ratio
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
