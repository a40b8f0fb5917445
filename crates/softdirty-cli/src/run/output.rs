//! The text report (the tables and the summary, [`print_report`]) and the SVG chart of
//! dirty pages per round ([`plot`]), with the number formatting `--scaling` shares.

use std::io::Write;
use std::path::Path;

use super::RunReport;

pub(super) fn human(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

pub(super) fn bytes(b: u64) -> String {
    if b >= 1 << 30 && b % (1 << 30) == 0 {
        format!("{} GiB", b >> 30)
    } else if b >= 1 << 20 {
        format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
    } else {
        format!("{} KiB", b.div_ceil(1024))
    }
}

/// Writes the tables and the summary of `r`.
pub fn print_report(r: &RunReport, out: &mut dyn Write) -> std::io::Result<()> {
    let c = &r.config;
    writeln!(
        out,
        "softdirty run: {} guest ({} pages mapped), {} vCPUs, workload {}, link {}/s, \
         {} writes/s per vCPU (simulated), stop at <= {} dirty pages ({} ms), seed {}",
        bytes(c.mem),
        c.mapped_pages,
        c.vcpus,
        c.workload,
        bytes(c.bandwidth),
        human(c.dirty_rate as f64),
        c.threshold_pages,
        c.downtime_ms,
        c.seed
    )?;
    for m in &r.modes {
        writeln!(out)?;
        writeln!(
            out,
            "{}: {} after {} rounds; stop-and-copy {} pages ({:.1} ms); {} pages sent; \
             {:.1} s simulated, {:.1} s real",
            m.mode,
            if m.converged {
                "converged"
            } else {
                "did not converge"
            },
            m.live_rounds,
            m.stop_and_copy_pages,
            m.downtime_ms,
            m.pages_sent_total,
            m.sim_s,
            m.wall_s
        )?;
        let legacy = m.false_positive_pages.is_some();
        write!(
            out,
            "{:>6} {:>10} {:>10} {:>11} {:>10} {:>9}",
            "round", "dirty", "sent", "harvest_us", "writes/s", "faults"
        )?;
        if legacy {
            write!(out, " {:>10}", "false_pos")?;
        }
        writeln!(out)?;
        for row in &m.rounds {
            let label = match row.phase.as_str() {
                "bulk" => "bulk".to_string(),
                "stop" => "stop".to_string(),
                _ => row.round.to_string(),
            };
            let hv = if row.phase == "bulk" {
                "-".to_string()
            } else {
                row.harvest_us.to_string()
            };
            let wps = if row.writes_per_s > 0.0 {
                human(row.writes_per_s)
            } else {
                "-".to_string()
            };
            write!(
                out,
                "{:>6} {:>10} {:>10} {:>11} {:>10} {:>9}",
                label, row.dirty_pages, row.pages_sent, hv, wps, row.faults
            )?;
            if let Some(fp) = row.false_positive_pages {
                write!(out, " {fp:>10}")?;
            }
            if row.ring_full_scan == Some(true) {
                write!(out, "  full scan")?;
            }
            if row.aborted {
                write!(out, "  aborted: link failed, pages given back")?;
            }
            writeln!(out)?;
        }
        writeln!(
            out,
            "  writes {} ({} EFAULT), churn ops {} ({} failed), faults {}, \
             pages written in fixed mappings {} (all sent: {})",
            m.writes,
            m.write_efaults,
            m.churn_ops,
            m.churn_errors,
            m.faults,
            m.written_pages,
            if m.written_pages_sent >= m.written_pages {
                "yes"
            } else {
                "NO"
            }
        )?;
        if let Some(rg) = &m.ring {
            writeln!(
                out,
                "  dirty rings of {} entries: {} ring harvests, {} full scans (overflow or \
                 layout change), {} entries, {} soft-full writes; vCPU dirty rates {} pages/s",
                rg.size,
                rg.ring_harvests,
                rg.full_harvests,
                rg.entries,
                rg.soft_full_writes,
                rg.vcpu_dirty_rate
                    .iter()
                    .map(|&r| human(r))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
        }
        if m.aborted_rounds > 0 {
            writeln!(
                out,
                "  {} rounds aborted (link failed), {} pages given back",
                m.aborted_rounds, m.pages_given_back
            )?;
        }
        writeln!(
            out,
            "  destination after stop-and-copy: {} stale pages{}",
            m.destination_stale_pages,
            if m.destination_stale_pages == 0 {
                " (equals the source: no write lost)"
            } else {
                " (WRITES LOST)"
            }
        )?;
    }
    writeln!(out)?;
    for m in &r.modes {
        if let (Some(fp), Some(fneg)) = (m.false_positive_pages, m.false_negative_pages) {
            writeln!(
                out,
                "legacy sent {fp} pages needlessly: pages it reported soft-dirty that precise \
                 tracking of the same operations, harvested at the same cuts, did not \
                 ({:.1}% of the {} it sent after the bulk copy); it missed {fneg}.",
                100.0 * fp as f64 / (m.pages_sent_total - m.rounds[0].pages_sent).max(1) as f64,
                m.pages_sent_total - m.rounds[0].pages_sent
            )?;
        }
    }
    if let (Some(extra), [p, l]) = (r.legacy_extra_pages, r.modes.as_slice()) {
        writeln!(
            out,
            "precise: {} pages sent, stop-and-copy {} ({:.1} ms); legacy: {} pages sent \
             ({extra:+}), stop-and-copy {} ({:.1} ms).",
            p.pages_sent_total,
            p.stop_and_copy_pages,
            p.downtime_ms,
            l.pages_sent_total,
            l.stop_and_copy_pages,
            l.downtime_ms
        )?;
    }
    Ok(())
}

/// The point a round contributes to the chart: the pages harvested dirty in a live round
/// (the bulk copy: everything mapped), and for the stop row the stop-and-copy set (what the
/// last live round left unsent plus the final harvest), which is what its label says.
fn plotted_pages(x: &super::Round) -> u64 {
    if x.phase == "stop" {
        x.pages_sent
    } else {
        x.dirty_pages
    }
}

/// Draws dirty pages per round, one line per mode, as SVG, to `path` (`-`: stdout).
pub fn plot(r: &RunReport, path: &Path) -> Result<(), String> {
    let svg = plot_svg(r).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::outpath::write_text(path, &svg)
}

/// The chart of [`plot`] as an SVG document.
pub fn plot_svg(r: &RunReport) -> Result<String, String> {
    use plotters::prelude::*;
    let max_round = r
        .modes
        .iter()
        .flat_map(|m| m.rounds.iter().map(|x| x.round))
        .max()
        .unwrap_or(1)
        .max(1);
    let max_dirty = r
        .modes
        .iter()
        .flat_map(|m| m.rounds.iter().map(plotted_pages))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 540)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let title = format!(
            "Dirty pages per pre-copy round ({} guest, {} vCPUs, {})",
            bytes(r.config.mem),
            r.config.vcpus,
            r.config.workload
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0u32..max_round, (1u64..max_dirty * 2).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("round (0 = bulk copy, last = stop-and-copy set)")
            .y_desc("dirty pages (log)")
            .draw()
            .map_err(|e| err(&e))?;
        let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];
        for (i, m) in r.modes.iter().enumerate() {
            let color = colors[i % colors.len()];
            let pts: Vec<(u32, u64)> = m
                .rounds
                .iter()
                .map(|x| (x.round, plotted_pages(x).max(1)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(m.mode.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}
