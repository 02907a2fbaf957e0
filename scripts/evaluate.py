#!/usr/bin/env python3
"""Turns the raw measurements of scripts/evaluate into docs/evaluation.md, its SVG plots and
docs/evaluation/results.json. Standard library only; never run by hand on made-up numbers:
scripts/evaluate calls it with the directory it just filled.

Raw input (--raw DIR): records.jsonl (one JSON object per measurement, written by
scripts/evaluate), wrk outputs, tuk's deploy-timing console lines, QEMU command lines, the
baseline's build manifest and the test logs.
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import xml.etree.ElementTree as ET

SIDES = ("tuk", "linux")
SIDE_NAME = {"tuk": "tuk", "linux": "Linux VM"}
COLOURS = {"tuk": "#1f77b4", "linux": "#d62728"}
ENDPOINTS = {"hello": "`GET /hello/`", "kv": "kv, 20 % PUT / 80 % GET"}

# Which security function each test demonstrates (the tests' own doc comments say how).
FUNCTIONS = [
    ("Signature refusal (bad signature, untrusted key, flipped bytes, wrong name; at boot and at runtime)",
     "tests/tests/signed.rs", "signed", "signed_components_measured_into_the_vtpm"),
    ("Rollback refusal (below the policy minimum: 403; not newer than what runs: 409)",
     "tests/tests/signed.rs", "signed", "signed_components_measured_into_the_vtpm"),
    ("Measured launch (launcher PCR 4/5 kept through the kernel's TPM resume; event log replays)",
     "tests/tests/vtpm.rs", "vtpm", "boots_with_the_vtpm_and_keeps_the_launchers_pcrs"),
    ("Measured components (PCR 9 per component; event log replays to tpm2_pcrread)",
     "tests/tests/signed.rs", "signed", "signed_components_measured_into_the_vtpm"),
    ("Run-time tamper detection in the guest: detect, record in PCR 10, rebuild",
     "tests/tests/integrity.rs", "integrity", "tampering_is_detected_recorded_and_repaired"),
    ("Run-time tamper response: quarantine (503 until a newer version)",
     "tests/tests/integrity.rs", "integrity", "quarantine_answers_503_until_a_newer_version_is_published"),
    ("Run-time tamper response: halt (exit 65, PCR 10 saved)",
     "tests/tests/integrity.rs", "integrity", "halt_policy_stops_the_vm_with_pcr_10_saved"),
    ("Run-time page-table audit: a page of a component's memory made writable and executable "
     "from the host is found and recorded in PCR 10",
     "tests/tests/integrity.rs", "integrity", "a_writable_executable_page_is_found_by_the_page_table_audit"),
    ("Run-time tamper detection from the host (out-of-guest monitor)",
     "tests/tests/monitor.rs", "monitor", "out_of_guest_monitor_catches_kernel_tampering_once_each"),
    ("Attestation failure: a replayed nonce, a changed or swapped PCR value, another PCR set, "
     "a flipped or truncated signature are each refused",
     "crates/tuk-attest/tests/swtpm.rs", "swtpm", "quote_verifies_and_tampering_is_detected"),
    ("Attestation: EK certificate chain and credential activation (RSA)",
     "crates/tuk-attest/tests/swtpm.rs", "swtpm", "rsa_ek_certificate_and_credential_activation"),
    ("Attestation: EK certificate chain and credential activation (ECC)",
     "crates/tuk-attest/tests/swtpm.rs", "swtpm", "ecc_eks_certificate_and_credential_activation"),
    ("Attestation end to end: forged, reordered and replayed evidence, a relayed AK, run-time "
     "tampers; the kernel's quote verified by tpm2_checkquote",
     "tests/tests/attest.rs", "attest", ""),
    ("Attestation-gated traffic: a kernel tamper turns the verifier's signed result "
     "contraindicated and the gateway answers 503; history survives restarts (SQLite, PostgreSQL); "
     "results parse with Veraison's ear crate",
     "tuk/tests/verifier_cli.rs", "verifier_cli", "verifier_gateway_and_kernel_reference"),
]


# --- input --------------------------------------------------------------------------------------

def load_records(raw):
    with open(os.path.join(raw, "records.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def of_kind(records, kind, **match):
    return [r for r in records if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())]


def duration_ms(text):
    """wrk's durations (`512.00us`, `1.23ms`, `2.00s`, `1.5m`) in milliseconds."""
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        return None
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]
    return float(m.group(1)) * scale


def parse_wrk(path):
    """requests/s, p50/p99 (ms), request count, non-2xx and socket errors of one wrk run."""
    with open(path) as f:
        text = f.read()
    out = {"rps": None, "p50_ms": None, "p99_ms": None, "requests": None, "non2xx": 0, "errors": 0}
    m = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        if m:
            out[key] = duration_ms(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["errors"] = sum(int(x) for x in m.groups())
    return out


def parse_deploy(path):
    """tuk's `deploy-timing` console lines: per component verify+hash, extend, load (µs)."""
    rows = {}
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            fields = dict(re.findall(r"(\w+)=(\S+)", line))
            if "name" in fields:
                rows[fields["name"]] = {k: int(fields[k]) for k in ("bytes", "verify_hash_us", "extend_us", "load_us")
                                        if k in fields and fields[k].isdigit()}
    return rows


def parse_test_log(path):
    """libtest's verdict: how many passed/failed, and the failure message's first lines."""
    with open(path) as f:
        text = f.read()
    passed = failed = 0
    for m in re.finditer(r"test result: (\w+)\. (\d+) passed; (\d+) failed", text):
        passed += int(m.group(2))
        failed += int(m.group(3))
    panic = re.search(r"panicked at [^\n]*\n([^\n]*)", text)
    return passed, failed, (panic.group(1).strip()[:160] if panic else "")


def qemu_options(path):
    """The options both sides must share, from a QEMU command line."""
    if not os.path.exists(path):
        return {}
    words = open(path).read().split()
    opts = {}
    for i, w in enumerate(words[:-1]):
        if w in ("-accel", "-cpu", "-smp", "-m", "-M"):
            opts[w] = words[i + 1]
    return opts


# --- statistics ---------------------------------------------------------------------------------

def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def ratio(a, b):
    if not a or not b or not b["median"]:
        return None
    return a["median"] / b["median"]


def fmt(v, digits=None):
    if v is None:
        return "–"
    if digits is None:
        digits = 0 if abs(v) >= 100 else (1 if abs(v) >= 10 else 2)
    return f"{v:,.{digits}f}"


def cell(s, digits=None):
    if s is None:
        return "–"
    if s["n"] == 1:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}–{fmt(s['max'], digits)})"


def fmt_ratio(r):
    return "–" if r is None else f"{r:.2f}×"


# --- SVG ----------------------------------------------------------------------------------------

def esc(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg_doc(width, height, body, title):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">\n'
            f'<title>{esc(title)}</title>\n<rect width="100%" height="100%" fill="white"/>\n'
            f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{esc(title)}</text>\n'
            + "\n".join(body) + "\n</svg>\n")


def log_ticks(lo, hi):
    """Decade ticks (1, 2, 5 × 10^k) covering [lo, hi]."""
    ticks = []
    k = 10 ** (int(f"{lo:e}".split("e")[1]) - 1)
    while k <= hi * 10:
        for m in (1, 2, 5):
            t = k * m
            if lo / 1.0001 <= t <= hi * 1.0001:
                ticks.append(t)
        k *= 10
    return ticks


def tick_label(v):
    return f"{v:g}"


def latency_chart(title, series, xs):
    """Latency (ms, log scale) against connections; series = [(label, colour, dash, [(x, s)])],
    each point a summary with median and min–max (drawn as a whisker)."""
    w, h, left, right, top, bottom = 640, 400, 70, 180, 40, 50
    values = [v for _, _, _, pts in series for _, s in pts if s for v in (s["min"], s["max"]) if v and v > 0]
    if not values:
        return svg_doc(w, h, ['<text x="40" y="60">no data</text>'], title)
    lo, hi = min(values) / 1.5, max(values) * 1.5
    import math
    llo, lhi = math.log10(lo), math.log10(hi)

    def y(v):
        return top + (h - top - bottom) * (1 - (math.log10(v) - llo) / (lhi - llo))

    def x(i):
        return left + (w - left - right) * (i + 0.5) / len(xs)

    body = [f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>']
    for t in log_ticks(lo, hi):
        yy = y(t)
        body.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{w - right}" y2="{yy:.1f}" stroke="#ddd"/>')
        body.append(f'<text x="{left - 5}" y="{yy + 4:.1f}" text-anchor="end">{tick_label(t)}</text>')
    for i, c in enumerate(xs):
        body.append(f'<text x="{x(i):.1f}" y="{h - bottom + 18}" text-anchor="middle">{c}</text>')
    body.append(f'<text x="{left + (w - left - right) / 2}" y="{h - 12}" text-anchor="middle">concurrent connections</text>')
    body.append(f'<text x="18" y="{top + (h - top - bottom) / 2}" text-anchor="middle" '
                f'transform="rotate(-90 18 {top + (h - top - bottom) / 2})">latency (ms, log scale)</text>')
    for n, (label, colour, dash, pts) in enumerate(series):
        shift = (n - (len(series) - 1) / 2) * 6
        coords = []
        for xv, s in pts:
            if not s or not s["median"] or s["median"] <= 0:
                continue
            xx = x(xs.index(xv)) + shift
            coords.append(f"{xx:.1f},{y(s['median']):.1f}")
            if s["min"] > 0 and s["max"] > s["min"]:
                body.append(f'<line x1="{xx:.1f}" y1="{y(s["min"]):.1f}" x2="{xx:.1f}" y2="{y(s["max"]):.1f}" '
                            f'stroke="{colour}" stroke-width="1"/>')
            body.append(f'<circle cx="{xx:.1f}" cy="{y(s["median"]):.1f}" r="3.5" fill="{colour}"/>')
        if coords:
            body.append(f'<polyline points="{" ".join(coords)}" fill="none" stroke="{colour}" stroke-width="2"'
                        + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        ly = top + 10 + n * 20
        body.append(f'<line x1="{w - right + 15}" y1="{ly}" x2="{w - right + 45}" y2="{ly}" stroke="{colour}" '
                    f'stroke-width="2"' + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        body.append(f'<text x="{w - right + 50}" y="{ly + 4}">{esc(label)}</text>')
    body.append(f'<text x="{w - right + 15}" y="{top + 10 + len(series) * 20 + 10}" font-size="10">dot = median,</text>')
    body.append(f'<text x="{w - right + 15}" y="{top + 10 + len(series) * 20 + 23}" font-size="10">bar = min–max</text>')
    return svg_doc(w, h, body, title)


def bar_chart(title, unit, groups):
    """Grouped bars: groups = [(group label, [(side, summary)])]; whiskers show min–max."""
    w, h, left, right, top, bottom = 640, 360, 70, 140, 40, 60
    top_value = max((s["max"] for _, bars in groups for _, s in bars if s), default=1) * 1.15
    top_value = top_value or 1

    def y(v):
        return top + (h - top - bottom) * (1 - v / top_value)

    body = [f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>']
    step = nice_step(top_value / 5)
    t = 0.0
    while t <= top_value:
        body.append(f'<line x1="{left}" y1="{y(t):.1f}" x2="{w - right}" y2="{y(t):.1f}" stroke="#ddd"/>')
        body.append(f'<text x="{left - 5}" y="{y(t) + 4:.1f}" text-anchor="end">{tick_label(t)}</text>')
        t += step
    body.append(f'<text x="18" y="{top + (h - top - bottom) / 2}" text-anchor="middle" '
                f'transform="rotate(-90 18 {top + (h - top - bottom) / 2})">{esc(unit)}</text>')
    gw = (w - left - right) / max(len(groups), 1)
    for g, (label, bars) in enumerate(groups):
        bw = gw * 0.7 / max(len(bars), 1)
        for b, (side, s) in enumerate(bars):
            if not s:
                continue
            bx = left + g * gw + gw * 0.15 + b * bw
            body.append(f'<rect x="{bx:.1f}" y="{y(s["median"]):.1f}" width="{bw * 0.9:.1f}" '
                        f'height="{h - bottom - y(s["median"]):.1f}" fill="{COLOURS[side]}"/>')
            cx = bx + bw * 0.45
            if s["max"] > s["min"]:
                body.append(f'<line x1="{cx:.1f}" y1="{y(s["min"]):.1f}" x2="{cx:.1f}" y2="{y(s["max"]):.1f}" stroke="black"/>')
            body.append(f'<text x="{cx:.1f}" y="{y(s["max"]) - 4:.1f}" text-anchor="middle" font-size="10">'
                        f'{fmt(s["median"])}</text>')
        body.append(f'<text x="{left + g * gw + gw / 2:.1f}" y="{h - bottom + 18}" text-anchor="middle">{esc(label)}</text>')
    for n, side in enumerate(SIDES):
        ly = top + 10 + n * 20
        body.append(f'<rect x="{w - right + 15}" y="{ly - 8}" width="14" height="12" fill="{COLOURS[side]}"/>')
        body.append(f'<text x="{w - right + 35}" y="{ly + 2}">{SIDE_NAME[side]}</text>')
    body.append(f'<text x="{w - right + 15}" y="{top + 60}" font-size="10">bar = median,</text>')
    body.append(f'<text x="{w - right + 15}" y="{top + 73}" font-size="10">line = min–max</text>')
    return svg_doc(w, h, body, title)


def nice_step(raw):
    import math
    if raw <= 0:
        return 1
    k = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * k:
            return m * k
    return 10 * k


def write_svg(path, text):
    ET.fromstring(text)  # well-formed, or fail loudly
    with open(path, "w") as f:
        f.write(text)


def pctl(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else None


def line_chart(title, xlabel, ylabel, xs, series, log_y=False):
    """Values against categories xs; series = [(label, colour, dash, [value or None per x])]."""
    import math
    w, h, left, right, top, bottom = 640, 380, 70, 200, 40, 50
    values = [v for _, _, _, vs in series for v in vs if v is not None and (v > 0 or not log_y)]
    if not values:
        return svg_doc(w, h, ['<text x="40" y="60">no data</text>'], title)
    if log_y:
        lo, hi = min(values) / 1.5, max(values) * 1.5
        llo, lhi = math.log10(lo), math.log10(hi)
        y = lambda v: top + (h - top - bottom) * (1 - (math.log10(v) - llo) / (lhi - llo))
        ticks = log_ticks(lo, hi)
    else:
        lo, hi = min(0.0, min(values)), max(values) * 1.15 or 1
        y = lambda v: top + (h - top - bottom) * (1 - (v - lo) / (hi - lo))
        step = nice_step((hi - lo) / 5)
        ticks, t = [], step * math.ceil(lo / step)
        while t <= hi:
            ticks.append(t)
            t += step
    x = lambda i: left + (w - left - right) * (i + 0.5) / len(xs)
    body = [f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>']
    for t in ticks:
        body.append(f'<line x1="{left}" y1="{y(t):.1f}" x2="{w - right}" y2="{y(t):.1f}" stroke="#ddd"/>')
        body.append(f'<text x="{left - 5}" y="{y(t) + 4:.1f}" text-anchor="end">{tick_label(round(t, 6))}</text>')
    for i, c in enumerate(xs):
        body.append(f'<text x="{x(i):.1f}" y="{h - bottom + 18}" text-anchor="middle">{esc(c)}</text>')
    body.append(f'<text x="{left + (w - left - right) / 2}" y="{h - 12}" text-anchor="middle">{esc(xlabel)}</text>')
    body.append(f'<text x="18" y="{top + (h - top - bottom) / 2}" text-anchor="middle" '
                f'transform="rotate(-90 18 {top + (h - top - bottom) / 2})">{esc(ylabel)}</text>')
    for n, (label, colour, dash, vs) in enumerate(series):
        coords = [f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(vs) if v is not None and (v > 0 or not log_y)]
        for c in coords:
            cx, cy = c.split(",")
            body.append(f'<circle cx="{cx}" cy="{cy}" r="3.5" fill="{colour}"/>')
        if coords:
            body.append(f'<polyline points="{" ".join(coords)}" fill="none" stroke="{colour}" stroke-width="2"'
                        + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        ly = top + 10 + n * 20
        body.append(f'<line x1="{w - right + 15}" y1="{ly}" x2="{w - right + 45}" y2="{ly}" stroke="{colour}" '
                    f'stroke-width="2"' + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        body.append(f'<text x="{w - right + 50}" y="{ly + 4}">{esc(label)}</text>')
    return svg_doc(w, h, body, title)


def security_section(records, raw, plot_dir, rel, params):
    """tuk's own security costs (scripts/bench_integrity.py, scripts/evaluate_attest.py)."""
    if params.get("security_costs") == "0":
        return {}, ["Not measured in this run (`--no-security-costs`).", ""], []
    parts = {r["part"]: r for r in of_kind(records, "security_costs")}
    out, lines, written = {}, [], []
    path = os.path.join(raw, "integrity.json")
    if parts.get("integrity", {}).get("ok") and os.path.exists(path):
        data = json.load(open(path))
        out["integrity"] = data
        tp = data["throughput"]
        base = tp.get("0", [])
        mean = lambda rows, i: statistics.mean(r[i] for r in rows) if rows else None
        b1, b16 = mean(base, 0), mean(base, 1)
        intervals = ["10", "100", "1000"]
        lines += ["### Run-time re-measurement: overhead against its interval", "",
                  "`GET /hello/` with the in-kernel monitor off and at three intervals (hello, kv and notes "
                  "signed; 96 MiB guest; wrk 8 s; two rounds, the second in reverse order; mean of the "
                  "rounds). CPU share = the monitor's total round time / uptime, from `/_tuk/status`.", "",
                  "| interval | req/s @1 (min–max of rounds) | loss @1 | req/s @16 (min–max) | loss @16 | "
                  "monitor CPU share | µs per MiB |",
                  "|---|---|---|---|---|---|---|",
                  f"| off | {cell(summary([r[0] for r in base]))} | – | {cell(summary([r[1] for r in base]))} | – | – | – |"]
        loss1, loss16, share = [], [], []
        for iv in intervals:
            rows = tp.get(iv, [])
            m1, m16 = mean(rows, 0), mean(rows, 1)
            l1 = 100 * (b1 - m1) / b1 if m1 and b1 else None
            l16 = 100 * (b16 - m16) / b16 if m16 and b16 else None
            sh = statistics.mean(data["cpu_share_pct"].get(iv, [0])) if data["cpu_share_pct"].get(iv) else None
            mib = statistics.median(data["us_per_mib"][iv]) if data["us_per_mib"].get(iv) else None
            loss1.append(l1)
            loss16.append(l16)
            share.append(sh)
            lines.append(f"| {iv} ms | {cell(summary([r[0] for r in rows]))} | {fmt(l1, 1)} % | "
                         f"{cell(summary([r[1] for r in rows]))} | {fmt(l16, 1)} % | "
                         f"{fmt(sh, 2)} % | {fmt(mib)} |")
        lines += ["", "Loss = 1 − mean(req/s) / mean(req/s with the monitor off). A negative loss is "
                  "noise (faster than off): under TCG on a shared 2-core host, throughput swings by tens "
                  "of percent between rounds (see min–max), more than the monitor costs at 100 ms and "
                  "above. The CPU share, measured inside the guest, is the steadier signal of what "
                  "re-measurement costs.", ""]
        name = "integrity-overhead.svg"
        write_svg(os.path.join(plot_dir, name), line_chart(
            "Run-time re-measurement: cost vs interval", "re-measurement interval", "%",
            [f"{iv} ms" for iv in intervals],
            [("throughput loss @1", "#1f77b4", "", loss1), ("throughput loss @16", "#1f77b4", "6 4", loss16),
             ("monitor CPU share", "#d62728", "", share)]))
        written.append(name)
        det = data["detection_ms"]
        lines += ["### Detection latency", "",
                  "A byte of hello's code image flipped by `tuk tamper` at a random phase of the "
                  "monitor's rounds, until `/_tuk/status` shows the violation recorded and hello "
                  "re-instantiated (includes the tamper tool's own run and a 2 ms poll).", "",
                  "| interval | samples | p50 (ms) | p99 (ms) | min | max |", "|---|---|---|---|---|---|"]
        det_ivs = sorted(det, key=int)
        for iv in det_ivs:
            v = det[iv]
            lines.append(f"| {iv} ms | {len(v)} | {fmt(statistics.median(v))} | {fmt(pctl(v, 0.99))} | "
                         f"{fmt(min(v))} | {fmt(max(v))} |")
        lines.append("")
        name = "detection.svg"
        write_svg(os.path.join(plot_dir, name), line_chart(
            "Tamper → detected and repaired, vs interval", "re-measurement interval", "ms (log scale)",
            [f"{iv} ms" for iv in det_ivs],
            [("p50", "#1f77b4", "", [statistics.median(det[iv]) for iv in det_ivs]),
             ("p99", "#1f77b4", "6 4", [pctl(det[iv], 0.99) for iv in det_ivs]),
             ("interval", "#999999", "2 3", [float(iv) for iv in det_ivs])], log_y=True))
        written.append(name)
        lines += [f"![re-measurement overhead]({rel}/integrity-overhead.svg) ![detection latency]({rel}/detection.svg)", ""]
    else:
        lines += ["Run-time re-measurement costs: **not measured** (scripts/bench_integrity.py failed in this run).", ""]
    path = os.path.join(raw, "attest.json")
    if parts.get("attest", {}).get("ok") and os.path.exists(path):
        data = json.load(open(path))
        out["attest"] = data
        row = lambda label, v: (f"| {label} | {len(v)} | {fmt(statistics.median(v), 1)} | {fmt(pctl(v, 0.99), 1)} | "
                                f"{fmt(min(v), 1)} | {fmt(max(v), 1)} |")
        ok = sum(1 for s in data["statuses"] if s == "affirming")
        lines += ["### Attestation round trip", "",
                  "One tuk instance (signed hello, TCG). `tuk attest` = identity, EK certificate chain, "
                  "credential activation, a quote for a fresh nonce, event-log replay and appraisal; the "
                  "verifier service pays registration once and then only the quote, appraisal, EAR "
                  f"signing and storing. {ok} of {len(data['statuses'])} results affirming.", "",
                  "| what (ms) | runs | p50 | p99 | min | max |", "|---|---|---|---|---|---|",
                  row("`tuk attest URL` (one-shot, in the CLI)", data["cli_ms"]),
                  row("verifier `POST /v1/instances/ID/attest` (registered instance)", data["verifier_ms"]), ""]
    else:
        lines += ["Attestation round trip: **not measured** (scripts/evaluate_attest.py failed in this run).", ""]
    return out, lines, written


# --- the report ---------------------------------------------------------------------------------

def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        qemu = "unknown"
    return {"cpu": model, "cores": os.cpu_count(), "qemu": qemu, "kernel": platform.release()}


def boot_section(records):
    boots = {s: of_kind(records, "boot", side=s) for s in SIDES}
    stats = {
        "boot_ms": {s: summary([b["boot_ms"] for b in boots[s]]) for s in SIDES},
        "guest_ms": {s: summary([b["guest_us"] / 1000 if b.get("guest_us") is not None else None
                                 for b in boots[s]]) for s in SIDES},
        "wall_ms": {s: summary([b["wall_ms"] for b in boots[s]]) for s in SIDES},
    }
    rows = [
        ("launch → first HTTP 200 (`boot_ms`: QEMU start → 200 on `/_tuk/health`), ms", "boot_ms"),
        ("guest-only boot (tuk: PVH entry → listening; Linux: TSC at listening, from VM start), ms", "guest_ms"),
        ("command → ready line, as this script sees it (tuk: + vTPM manufacture and measured launch), ms", "wall_ms"),
    ]
    lines = ["| metric | tuk | Linux VM | tuk/Linux |", "|---|---|---|---|"]
    for label, key in rows:
        t, l = stats[key]["tuk"], stats[key]["linux"]
        lines.append(f"| {label} | {cell(t)} | {cell(l)} | {fmt_ratio(ratio(t, l))} |")
    extra = {
        "launch_ms": summary([b.get("launch_ms") for b in boots["tuk"]]),
        "manufacture_ms": summary([b.get("manufacture_ms") for b in boots["tuk"]]),
        "init_start_ms": summary([b["init_start_us"] / 1000 for b in boots["linux"] if b.get("init_start_us") is not None]),
        "kernel_clock_ms": summary([b["kernel_clock_us"] / 1000 for b in boots["linux"] if b.get("kernel_clock_us") is not None]),
    }
    stats["extra"] = extra
    return stats, lines


def load_section(records, raw):
    cells = {}
    for r in of_kind(records, "wrk"):
        parsed = parse_wrk(os.path.join(raw, r["file"]))
        cells.setdefault((r["endpoint"], r["conns"], r["side"]), []).append(parsed)
    conns = sorted({k[1] for k in cells})
    stats = {}
    lines = []
    for endpoint in ENDPOINTS:
        lines += [f"**{ENDPOINTS[endpoint]}**", "",
                  "| conns | req/s tuk | req/s Linux | tuk/Linux | p50 ms tuk | p50 ms Linux | tuk/Linux | "
                  "p99 ms tuk | p99 ms Linux | tuk/Linux | non-2xx / errors (tuk; Linux) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in conns:
            row = [str(c)]
            per = {}
            for side in SIDES:
                runs = cells.get((endpoint, c, side), [])
                per[side] = {k: summary([r[k] for r in runs]) for k in ("rps", "p50_ms", "p99_ms")}
                per[side]["non2xx"] = sum(r["non2xx"] for r in runs)
                per[side]["errors"] = sum(r["errors"] for r in runs)
                per[side]["runs"] = len(runs)
            for k in ("rps", "p50_ms", "p99_ms"):
                row += [cell(per["tuk"][k]), cell(per["linux"][k]), fmt_ratio(ratio(per["tuk"][k], per["linux"][k]))]
            row.append(f"{per['tuk']['non2xx']} / {per['tuk']['errors']}; {per['linux']['non2xx']} / {per['linux']['errors']}")
            lines.append("| " + " | ".join(row) + " |")
            stats[f"{endpoint}/{c}"] = per
        lines.append("")
    return stats, conns, lines


def function_section(records):
    tests = of_kind(records, "test")
    if not tests:
        return None, ["Not run in this evaluation (`--no-function-tests`)."]
    build = of_kind(records, "tests_build")
    by_fn = {(t["target"], t["function"]): t for t in tests}
    lines = ["| security function | test | result | duration | run at (UTC) |", "|---|---|---|---|---|"]
    results = []
    for function, path, target, fn in FUNCTIONS:
        t = by_fn.get((target, fn))
        if t is None:
            if os.path.exists(path) or target != "attest":
                lines.append(f"| {function} | `{path}` `{fn}` | not run | – | – |")
            continue
        passed, failed, reason = t["passed"], t["failed"], t["reason"]
        if t["status"] == 0 and passed >= 1 and failed == 0:
            verdict = "**pass**" + (f" ({passed} tests)" if passed > 1 else "")
        elif passed == 0 and failed == 0 and t["status"] == 0:
            verdict = "**no test ran** (name not found)"
        else:
            verdict = f"**FAIL** (exit {t['status']}{'; ' + esc(reason) if reason else ''})"
        when = datetime.datetime.fromtimestamp(t["unix"], datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
        name = f"`{fn}`" if fn else "all tests"
        lines.append(f"| {function} | `{path}`: {name} | {verdict} | {t['ms'] / 1000:.1f} s | {when} |")
        results.append({"function": function, "test": f"{path}::{fn}", "status": t["status"],
                        "passed": passed, "failed": failed, "ms": t["ms"], "unix": t["unix"]})
    if build:
        lines += ["", f"Compiling the test binaries first took {build[0]['ms'] / 1000:.0f} s"
                      f"{'' if build[0]['ok'] else ' and FAILED'} (not counted in the durations)."]
    return results, lines


def sizes_section(records):
    s = of_kind(records, "sizes")[0]
    mib = lambda b: f"{b / 1048576:.2f} MiB"
    tuk_total = s["tuk_kernel"] + s["bundles"]
    pvh = s["vmlinux"] + s["initramfs"]
    bz = s["vmlinuz"] + s["initramfs"]
    lines = [
        "| what boots | tuk | Linux VM (PVH: vmlinux) | Linux VM (bzImage: vmlinuz) |",
        "|---|---|---|---|",
        f"| kernel | {s['tuk_kernel']:,} B ({mib(s['tuk_kernel'])}) | {s['vmlinux']:,} B ({mib(s['vmlinux'])}) | {s['vmlinuz']:,} B ({mib(s['vmlinuz'])}) |",
        f"| components + userland | signed bundles: {s['bundles']:,} B ({mib(s['bundles'])}) | initramfs: {s['initramfs']:,} B ({mib(s['initramfs'])}) | initramfs: the same |",
        f"| total | {tuk_total:,} B ({mib(tuk_total)}) | {pvh:,} B ({mib(pvh)}) | {bz:,} B ({mib(bz)}) |",
        f"| tuk/Linux (total) | | {tuk_total / pvh:.3f}× | {tuk_total / bz:.3f}× |",
    ]
    return s, lines


def memory_section(records, step):
    out, lines = {}, ["| | tuk | Linux VM |", "|---|---|---|"]
    probes = {s: sorted((p["mib"], p["ok"]) for p in of_kind(records, "mem_probe", side=s)) for s in SIDES}
    for s in SIDES:
        m = of_kind(records, "min_memory", side=s)
        out[s] = m[0] if m else None
    def show(m):
        if not m:
            return "–"
        if m["mib"] is None:
            return f"none up to {m['fails_at']} MiB"
        if m["at_most"]:
            return f"≤ {m['mib']} MiB"
        return f"**{m['mib']} MiB** (fails at {m['fails_at']})"
    lines.append(f"| smallest guest memory serving hello, kv and notes | {show(out['tuk'])} | {show(out['linux'])} |")
    lines.append("| probes (MiB: ✓ serves, ✗ not) | " + " | ".join(
        ", ".join(f"{m}{'✓' if ok else '✗'}" for m, ok in probes[s]) for s in SIDES) + " |")
    if out["tuk"] and out["linux"] and out["tuk"]["mib"] and out["linux"]["mib"]:
        lines.append(f"| tuk/Linux | {out['tuk']['mib'] / out['linux']['mib']:.2f}× | |")
    return out, lines


def idle_section(records):
    r = of_kind(records, "idle_cpu")[0]
    pct = lambda ticks: 100.0 * ticks / r["hz"] / r["seconds"]
    t, l, tl = pct(r["tuk_qemu_ticks"]), pct(r["linux_qemu_ticks"]), pct(r["tuk_launcher_ticks"])
    lines = ["| host CPU of an idle instance over 10 s (utime+stime, % of one core) | tuk | Linux VM | tuk/Linux |",
             "|---|---|---|---|",
             f"| QEMU process | {t:.2f} % | {l:.2f} % | {(t / l if l else float('nan')):.2f}× |",
             f"| tuk's launcher process (`tuk run`: out-of-guest monitor every 1 s) | {tl:.2f} % | – | |",
             f"| resolution: one clock tick = {100.0 / r['hz'] / r['seconds']:.2f} % | | | |"]
    return {"tuk_qemu_pct": t, "linux_qemu_pct": l, "tuk_launcher_pct": tl}, lines


def deploy_section(records, raw):
    per = {}
    for b in of_kind(records, "boot", side="tuk"):
        for name, v in parse_deploy(os.path.join(raw, b["deploy"])).items():
            per.setdefault(name, []).append(v)
    lines = ["| component | bundle bytes | verify signature + hash (µs) | PCR 9 extend (µs) | load + instantiate (µs) |",
             "|---|---|---|---|---|"]
    out = {}
    for name in sorted(per):
        rows = per[name]
        st = {k: summary([r.get(k) for r in rows]) for k in ("verify_hash_us", "extend_us", "load_us")}
        out[name] = st
        lines.append(f"| {name} | {rows[0].get('bytes', '–')} | {cell(st['verify_hash_us'])} | "
                     f"{cell(st['extend_us'])} | {cell(st['load_us'])} |")
    return out, lines


def setup_lines(raw):
    opts = {s: qemu_options(os.path.join(raw, f"qemu.{s}.cmdline")) for s in SIDES}
    lines = ["| QEMU option | tuk | Linux VM |", "|---|---|---|"]
    for k in ("-accel", "-cpu", "-smp", "-m", "-M"):
        lines.append(f"| `{k}` | `{opts['tuk'].get(k, '–')}` | `{opts['linux'].get(k, '–')}` |")
    manifest = os.path.join(raw, "baseline-manifest.txt")
    same = []
    if os.path.exists(manifest):
        same = [l.strip() for l in open(manifest) if "machine code" in l]
    return opts, lines, same


def summary_lines(boot, load, sizes, memory, idle):
    """The headline ratios, each from the tables below."""
    def rps(endpoint, c):
        per = load.get(f"{endpoint}/{c}")
        return ratio(per["tuk"]["rps"], per["linux"]["rps"]) if per else None
    tuk_total = sizes["tuk_kernel"] + sizes["bundles"]
    mem = None
    if memory.get("tuk") and memory.get("linux") and memory["tuk"]["mib"] and memory["linux"]["mib"]:
        mem = memory["tuk"]["mib"] / memory["linux"]["mib"]
    rows = [
        ("launch → first HTTP 200 (median)", ratio(boot["boot_ms"]["tuk"], boot["boot_ms"]["linux"]), "lower is better"),
        ("guest-only boot (median)", ratio(boot["guest_ms"]["tuk"], boot["guest_ms"]["linux"]), "lower is better"),
    ]
    for endpoint in ENDPOINTS:
        for c in sorted({int(k.split("/")[1]) for k in load if k.startswith(endpoint + "/")}):
            rows.append((f"requests/s, {ENDPOINTS[endpoint]}, {c} connection{'s' if c > 1 else ''}",
                         rps(endpoint, c), "higher is better"))
    rows += [
        ("image: kernel + components (vs vmlinuz + initramfs)", tuk_total / (sizes["vmlinuz"] + sizes["initramfs"]), "lower is better"),
        ("smallest guest memory serving hello, kv, notes", mem, "lower is better"),
        ("host CPU of the idle QEMU process", idle["tuk_qemu_pct"] / idle["linux_qemu_pct"] if idle["linux_qemu_pct"] else None,
         "lower is better; a few clock ticks"),
    ]
    return ["| metric | tuk/Linux | |", "|---|---|---|"] + [f"| {m} | {fmt_ratio(r)} | {note} |" for m, r, note in rows]


def plots(plot_dir, load, conns, boot):
    os.makedirs(plot_dir, exist_ok=True)
    written = []
    for endpoint in ENDPOINTS:
        series = []
        for side in SIDES:
            for pct, dash in (("p50_ms", ""), ("p99_ms", "6 4")):
                pts = [(c, load.get(f"{endpoint}/{c}", {}).get(side, {}).get(pct)) for c in conns]
                series.append((f"{SIDE_NAME[side]} {pct[:3]}", COLOURS[side], dash, pts))
        name = f"latency-{endpoint}.svg"
        write_svg(os.path.join(plot_dir, name),
                  latency_chart(f"{endpoint}: latency vs connections (p50 solid, p99 dashed)", series, conns))
        written.append(name)
        groups = [(f"{c} conn", [(s, load.get(f"{endpoint}/{c}", {}).get(s, {}).get("rps")) for s in SIDES]) for c in conns]
        name = f"throughput-{endpoint}.svg"
        write_svg(os.path.join(plot_dir, name), bar_chart(f"{endpoint}: requests/s", "requests/s", groups))
        written.append(name)
    groups = [("launch → first 200", [(s, boot["boot_ms"][s]) for s in SIDES]),
              ("guest-only boot", [(s, boot["guest_ms"][s]) for s in SIDES])]
    write_svg(os.path.join(plot_dir, "boot.svg"), bar_chart("Boot time (ms)", "ms", groups))
    written.append("boot.svg")
    return written


def package_of(path):
    """The cargo package whose test file `path` is (tests/ → tuk-e2e, crates/NAME/ → NAME)."""
    top = path.split("/")
    if top[0] == "tests":
        return "tuk-e2e"
    if top[0] == "crates":
        return top[1]
    return top[0]


def list_tests():
    """The tests scripts/evaluate runs, one `package target [function]` line each, in
    FUNCTIONS' order (each once): the single list both the driver and the report use."""
    seen = set()
    for _, path, target, fn in FUNCTIONS:
        line = " ".join(x for x in (package_of(path), target, fn) if x)
        if line not in seen:
            seen.add(line)
            print(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--list-tests", action="store_true",
                    help="print the function tests to run (package target [function]) and exit")
    ap.add_argument("--raw")
    ap.add_argument("--report")
    ap.add_argument("--plots")
    ap.add_argument("--command")
    ap.add_argument("--params", default="")
    args = ap.parse_args()
    if args.list_tests:
        list_tests()
        return
    for required in ("raw", "report", "plots", "command"):
        if getattr(args, required) is None:
            ap.error(f"--{required} is required")
    params = dict(p.split("=", 1) for p in args.params.split())
    records = load_records(args.raw)
    for t in of_kind(records, "test"):
        t["passed"], t["failed"], t["reason"] = parse_test_log(os.path.join(args.raw, t["file"]))

    start, end = of_kind(records, "start")[0], of_kind(records, "end")[0]
    mach = machine()
    opts, setup, same_code = setup_lines(args.raw)
    boot, boot_lines = boot_section(records)
    load, conns, load_lines = load_section(records, args.raw)
    sizes, size_lines = sizes_section(records)
    memory, memory_lines = memory_section(records, params.get("mem_step"))
    idle, idle_lines = idle_section(records)
    deploy, deploy_lines = deploy_section(records, args.raw)
    functions, function_lines = function_section(records)
    written = plots(args.plots, load, conns, boot)
    rel_plots = os.path.relpath(args.plots, os.path.dirname(args.report))
    security, security_lines, more = security_section(records, args.raw, args.plots, rel_plots, params)
    written += more
    headline = summary_lines(boot, load, sizes, memory, idle)
    finish = of_kind(records, "finish")
    rel = os.path.relpath(args.plots, os.path.dirname(args.report))
    date = datetime.datetime.fromtimestamp(start["unix"], datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    minutes = (end["unix"] - start["unix"]) / 60

    md = [
        "# Evaluation: tuk against a Linux VM",
        "",
        "Generated by the command below; do not edit by hand (rerun it). Raw numbers, parsed: "
        f"[`{rel}/results.json`]({rel}/results.json). How the baseline is built and what differs: "
        "[baseline.md](baseline.md).",
        "",
        "| | |", "|---|---|",
        f"| command | `{args.command}` |",
        f"| date | {date} (measurements: {minutes:.1f} min"
        + (f"; the whole command, builds and function tests included: "
           f"{(finish[0]['unix'] - finish[0]['began']) / 60:.1f} min" if finish else "") + ") |",
        f"| machine | {mach['cpu']}, {mach['cores']} cores, Linux {mach['kernel']} |",
        f"| host load average (1, 5, 15 min) | start {start['loadavg']}; end {end['loadavg']} |",
        f"| QEMU | {mach['qemu']} |",
        f"| accelerator | {opts['tuk'].get('-accel', '?').upper()} (both sides; docs/platform.md: why not KVM here) |",
        f"| repetitions | boot: {params.get('boot_reps')} per side (after one warm-up boot each); "
        f"load: {params.get('load_reps')} × {params.get('duration')} s per cell |",
        "",
        "**Under TCG only ratios within one run mean anything.** The emulator dominates absolute "
        "numbers, and the machine is shared: the host load above says how busy it was. Compare the "
        "tuk/Linux columns, not these numbers with another run's or another machine's.",
        "",
        "## Summary",
        "",
        "tuk/Linux ratios from the tables below (medians of this run).",
        "",
        *headline,
        "",
        "## Setup",
        "",
        "Both sides serve the same three component files (`target/components/{hello,kv,notes}.wasm`), "
        "compiled ahead of time with the same engine configuration, with the same HTTP engine and "
        "routes, behind QEMU user networking (hostfwd) on loopback. The same QEMU options:",
        "",
        *setup,
        "",
        "Baseline build manifest: " + ("; ".join(same_code) if same_code else "not available") + ".",
        "",
        "tuk runs as deployed, with every security function on: components signed and verified "
        "against a trust policy (`--trust`), the vTPM with measured launch (PCR 4/5) and "
        "measured components (PCR 9), in-guest run-time measurement every 1000 ms and the "
        "out-of-guest monitor every 1000 ms (`tuk run`'s defaults). The Linux VM has none of these "
        "(docs/baseline.md, \"Not in the baseline\").",
        "",
        "## Boot time",
        "",
        f"Boots per side: {params.get('boot_reps')}, at {params.get('memory')} MiB, alternating tuk, Linux, tuk, … "
        "Median (min–max). Each tuk boot gets a fresh state directory, so its vTPM is "
        "manufactured every time (outside `boot_ms`, inside the command → ready time).",
        "",
        *boot_lines,
        "",
        f"tuk's launcher before QEMU starts: measured launch {cell(boot['extra']['launch_ms'])} ms, "
        f"vTPM manufacture {cell(boot['extra']['manufacture_ms'])} ms. Linux VM, its own clock: "
        f"`/init` started at {cell(boot['extra']['init_start_ms'])} ms, listening at "
        f"{cell(boot['extra']['kernel_clock_ms'])} ms (the clock starts after firmware and early boot, "
        "which the TSC number above includes).",
        "",
        f"![boot time]({rel}/boot.svg)",
        "",
        "## Throughput and latency",
        "",
        f"`wrk --latency --timeout 10s`, keep-alive, {params.get('duration')} s per cell, "
        f"repetitions: {params.get('load_reps')}; one thread at 1 connection, two otherwise. Both VMs "
        f"({params.get('memory')} MiB each) run at the same time and wrk alternates between them cell by "
        "cell (the side that goes first alternates by repetition), so host noise hits both; the idle "
        "one costs what the idle-CPU table says. kv: `scripts/evaluate-kv.lua`, 20 % PUT / 80 % GET "
        "of 64-byte values over 8 keys stored before the runs. Median (min–max) over repetitions; "
        "for req/s a ratio above 1 favours tuk, for latency below 1 does.",
        "",
        *load_lines,
        "p99 values around a second or more at 16 and 64 connections appear on both sides and swing "
        "between repetitions (see min–max): they are stalls of a few requests (most likely TCP "
        "retransmissions on the path through QEMU's user networking), not the typical request's "
        "cost. Medians and requests/s are the steadier signal.",
        "",
        f"![hello latency]({rel}/latency-hello.svg) ![kv latency]({rel}/latency-kv.svg)",
        "",
        f"![hello throughput]({rel}/throughput-hello.svg) ![kv throughput]({rel}/throughput-kv.svg)",
        "",
        "## Image size",
        "",
        *size_lines,
        "",
        "The Linux VM's initramfs holds `/init` (wasmtime runtime, statically linked), the virtio "
        "modules and the components compiled for Linux; tuk's kernel holds the wasmtime runtime, "
        "and the signed bundles hold each component's `.wasm`, compiled code and signature.",
        "",
        "## Memory",
        "",
        f"Bisection (to {params.get('mem_step')} MiB) for the smallest `-m` with which a fresh VM "
        "answers `GET /hello/`, a kv `PUT` then `GET`, and a notes `POST` then `GET`.",
        "",
        *memory_lines,
        "",
        "## Host CPU when idle",
        "",
        "Both VMs booted and idle at the same time, 3 s after they answered, from "
        "`/proc/<pid>/stat` (utime + stime).",
        "",
        *idle_lines,
        "",
        "## tuk only: static measurement at boot",
        "",
        "From the kernel's `deploy-timing` console lines (TSC) in the boots above: verify the "
        "bundle's signature and hash the `.wasm` and compiled code, extend PCR 9 through the TPM "
        "driver, then deserialize and instantiate. Median (min–max) over the boots.",
        "",
        *deploy_lines,
        "",
        "## tuk only: the cost of run-time measurement and attestation",
        "",
        "The Linux VM has no equivalent; these are tuk's own costs, measured in this run "
        "(`scripts/bench_integrity.py`, `scripts/evaluate_attest.py`).",
        "",
        *security_lines,
        "## Security functions: tests",
        "",
        "Each function, the test that demonstrates it and its result in this run (`cargo test "
        "--locked -p <package> --test <file> -- --exact <function>`, the dev profile as "
        "`scripts/test` uses). The Linux VM has none of these functions.",
        "",
        *function_lines,
        "",
    ]
    with open(args.report, "w") as f:
        f.write("\n".join(md))
    results = {
        "command": args.command, "date": date, "machine": mach, "params": params,
        "loadavg": {"start": start["loadavg"], "end": end["loadavg"]}, "qemu_options": opts,
        "boot": boot, "load": load, "sizes": sizes, "min_memory": memory, "idle_cpu": idle,
        "deploy_timing": deploy, "function_tests": functions, "security_costs": security,
        "plots": written,
    }
    with open(os.path.join(args.plots, "results.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
