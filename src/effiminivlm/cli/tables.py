"""Terminal tables (rich) of the protocol commands: `profile`, `score` and `benchmark`.

Why apart from the plots: a table needs rich, a plot needs matplotlib; a command that only prints should not
import a plotting stack, and each stays small enough to read.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

from effiminivlm.bench.throughput import SCOPE_MEANING, BenchmarkResult
from effiminivlm.protocol.formulas import ProtocolCfg, cap_cost, leaderboard_rank, ranked_count

if TYPE_CHECKING:
    from effiminivlm.protocol.profile import ModelProfile


def _console(console: Any = None) -> Any:
    from rich.console import Console

    return console or Console(width=None if sys.stdout.isatty() else 130)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "undefined" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _protocol_rows(c: float, e: float, plcc: float | None, ces: float | None, protocol: dict[str, Any],
                   plcc_note: str = "", rank: int | None = None, no_rank: str = ""
                   ) -> list[tuple[str, str, str]]:
    """(quantity, value, how) rows for C, E and, when a PLCC is known, PLCC and CES with its would-be rank
    (`rank`, or `no_rank` saying why there is none)."""
    cfg = ProtocolCfg(**protocol)
    c_cap = cap_cost(cfg)
    rows = [("C", f"{c:.4f}", f"(P/{cfg.params_target_m:g}M)^{cfg.params_weight:g} x "
                              f"(F/{cfg.flops_target_g:g}G)^{cfg.flops_weight:g}"),
            ("E", f"{e:.4f}", f"capped at {cfg.e_cap:.2f} (C < {c_cap:.3f})" if c <= c_cap
             else f"1 + {cfg.alpha:g} ln(1/C)" if c <= 1
             else f"1 / (1 + {cfg.beta:g} ln C): penalty, C > 1 ({cfg.penalty} form)")]
    if plcc is not None:
        rows.append(("PLCC", _fmt(plcc), plcc_note))
        how = "max(0, PLCC) x E"
        if math.isnan(plcc):
            how += "; PLCC undefined (constant predictions): PLCC+ and CES count as 0 (reference scorer)"
        if rank:
            how += (f"; would rank #{rank} of {ranked_count() + 1} among the ranked rows of the LoViF 2026 "
                    "leaderboard (comparable on its test set only)")
        elif no_rank:
            how += f"; {no_rank}"
        rows.append(("CES", f"[bold]{_fmt(ces)}[/]", how))
    return rows


def _kv_table(rows: list[tuple[str, str, str]]) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_header=False)
    table.add_column("quantity", style="bold")
    table.add_column("value", justify="right")
    table.add_column("how", style="dim")
    for row in rows:
        table.add_row(*row)
    return table


def render_profile(p: ModelProfile) -> Any:
    """Rich renderables: params and FLOPs per part, then C, E (and PLCC, CES), then how it was counted."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    mean = p.flops_by_module_g_mean_length
    title = Text(f"EffiMiniVLM profile: {p.label}, modalities {p.modalities}", style="bold")
    parts = Table()
    columns = ["part", "params (M)", "GFLOPs canonical"] + [f"GFLOPs at {p.mean_length} tokens"] * bool(mean)
    for name in columns:
        parts.add_column(name, justify="left" if name == "part" else "right")
    extra = [""] * bool(mean)
    for part in dict.fromkeys([*p.params_by_module_m, *p.flops_by_module_g]):
        parts.add_row(part, f"{p.params_by_module_m.get(part, 0.0):.3f}",
                      f"{p.flops_by_module_g.get(part, 0.0):.3f}",
                      *([f"{mean.get(part, 0.0):.3f}"] if mean else []))
    parts.add_section()
    parts.add_row("[bold]total[/]", f"[bold]{p.params_m:.3f}[/]", f"[bold]{p.flops_g:.3f}[/]",
                  *([f"[bold]{p.flops_g_mean_length:.3f}[/]"] if mean else []))
    parts.add_row("  of which trainable", f"{p.trainable_m:.3f}", "", *extra)
    parts.add_row("  of which attention (QK^T, AV)", "", f"{p.attention_g:.3f}", *extra)
    rank = leaderboard_rank(p.ces) if p.ces is not None else None
    protocol = _kv_table(_protocol_rows(p.c, p.e, p.plcc, p.ces, p.protocol, f"from {p.plcc_source}", rank))

    inputs = [f"{p.image_size}x{p.image_size} image" if p.image_size else "no image tower",
              f"text padded/truncated to {p.max_length} tokens, all attended" if p.max_length
              else "no text tower"]
    lines = [f"Canonical FLOPs: one forward pass, batch 1, {', '.join(inputs)}; counted with {p.method}.",
             f"P = all {p.params:,} parameters (frozen included); C uses the canonical FLOPs."]
    if p.mean_tokens is not None:
        where = (" (given with --mean-tokens)" if p.mean_tokens_source == "--mean-tokens"
                 else f" in {p.mean_tokens_source}" if p.mean_tokens_source else "")
        lines.append(f"Mean length: {p.mean_tokens:.1f} real tokens{where}; counted at {p.mean_length} "
                     "tokens (informational, not used for C).")
    notes = Text("\n".join(lines), style="dim")
    if p.uncounted_ops:
        ops = ", ".join(f"{op} (x{n})" for op, n in p.uncounted_ops.items())
        notes.append(f"\nWARNING: ops with a cost but no FLOP formula ran and are NOT counted: {ops}; the "
                     "FLOPs above are a lower bound.", style="bold red")
    return Group(title, parts, protocol, notes)


def print_profile(profile: ModelProfile, console: Any = None) -> None:
    """Print the profile (to stdout unless a rich Console is given); wide when piped."""
    _console(console).print(render_profile(profile))


def render_score(result: dict[str, Any]) -> Any:
    """Rich renderables of a `score_submission` result: the leaderboard's columns plus the would-be rank
    (only against the LoViF 2026 test set; otherwise the result's `rank_note` says why there is none)."""
    from rich.console import Group
    from rich.text import Text

    rows = [("items", f"{result['n_items']:,}", "matched one to one with the truth"),
            ("params (M)", f"{result['params_m']:.2f}", "as the submission states"),
            ("FLOPs (G)", f"{result['flops_g']:.2f}", "as the submission states"),
            *_protocol_rows(result["c"], result["e"], result["plcc"], result["ces"], result["protocol"],
                            f"PLCC+ = {_fmt(result['plcc_plus'])}", result["leaderboard_rank"],
                            result.get("rank_note") or "")]
    title = Text(f"LoViF 2026 score: {result['submission']} against {result['truth']}", style="bold")
    warnings = Text("\n".join(f"warning: {w}" for w in result.get("warnings", [])), style="bold yellow")
    return Group(title, _kv_table(rows), warnings)


def print_score(result: dict[str, Any], console: Any = None) -> None:
    """Print the score (to stdout unless a rich Console is given)."""
    _console(console).print(render_score(result))


# ------------------------------------------------------------------------------------------- benchmark

def render_table(results: list[BenchmarkResult]) -> Any:
    """A rich Table: one row per (scope, precision), the shared setup in the title and caption."""
    from rich import box
    from rich.table import Table

    first = results[0]
    cuda = first.device.startswith("cuda")
    table = Table(box=box.SIMPLE_HEAD, title=(
        f"EffiMiniVLM runtime: {first.model}, {first.params_m:.2f} M params\n{first.device}: "
        f"{first.device_name}, torch {first.torch_version}, {first.threads} threads, "
        f"load avg {first.load_avg_1m}"))
    memory = "CUDA MB\nalloc/reserved" if cuda else "peak RSS\nMB (run)"
    heads = ["scope", "precision", "batches", "samples", "tokens\nreal/padded", "total\ns", "ms/\nsample",
             "ms/\ntoken", "samples\n/s", "tokens\n/s", "CPU\nbusy", memory]
    for name in heads:
        table.add_column(name, justify="left" if name in ("scope", "precision") else "right")
    for r in results:
        mem = (f"{r.cuda_max_allocated_mb}/{r.cuda_max_reserved_mb}" if cuda
               else f"{r.peak_rss_mb} ({r.rss_increase_mb:+})" if r.rss_increase_mb is not None
               else f"{r.peak_rss_mb}")
        table.add_row(r.scope, r.precision, str(r.measured_batches), str(r.samples),
                      f"{r.tokens}/{r.padded_tokens}", f"{r.seconds:.3f}", f"{r.ms_per_sample:.2f}",
                      "-" if r.ms_per_token is None else f"{r.ms_per_token:.4f}", f"{r.samples_per_s:.1f}",
                      f"{r.tokens_per_s:.0f}", f"{r.cpu_busy:.2f}", mem)
    split = f" (split {first.split})" if first.split else ""
    table.caption = (
        f"batch size {first.batch_size}, {first.warmup_batches} warmup batch(es) excluded, "
        f"{first.num_workers} DataLoader worker(s), images: {first.images}; padding {first.padding}.\n"
        f"end_to_end = {SCOPE_MEANING['end_to_end']}.\nmodel = {SCOPE_MEANING['model']}.\n"
        f"data: {', '.join(first.inputs)}{split}, {first.rows_available} rows available.")
    return table


def print_report(results: list[BenchmarkResult], console: Any = None) -> None:
    """Print the table (to stdout unless a rich Console is given); wide when piped, so no column is cut."""
    import sys

    from rich.console import Console

    (console or Console(width=None if sys.stdout.isatty() else 150)).print(render_table(results))


def print_recipes(rows: list[Any], console: Any = None) -> None:
    """`effiminivlm recipes`: one line per recipe (protocol.recipes.RecipeRow), errors in place of numbers."""
    from rich import box
    from rich.table import Table

    from effiminivlm.protocol.recipes import fmt_num

    table = Table(box=box.SIMPLE_HEAD,
                  title="Recipes by the LoViF 2026 protocol (random init, canonical input)")
    for col in ("recipe", "arch", "towers", "input"):
        table.add_column(col)
    for col in ("params M", "trainable M", "FLOPs G", "C", "best E"):
        table.add_column(col, justify="right")
    for r in rows:
        if r.error:
            table.add_row(r.name, r.arch or "-", f"[red]error: {r.error}[/]", "", "", "", "", "", "")
            continue
        size = f"{r.image_size}px" if r.image_size else "-"
        tokens = f"{r.max_length} tok" if r.max_length else "-"
        table.add_row(r.name, r.arch, f"{r.image_encoder} / {r.text_encoder}", f"{size}, {tokens}",
                      fmt_num(r.params_m, 2), fmt_num(r.trainable_m, 2), fmt_num(r.flops_g, 2), f"{r.c:.3g}",
                      f"{r.e:.3f}")
    _console(console).print(table)
