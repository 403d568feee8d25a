//! What /proc tells about a process: CPU time and memory.

use anyhow::{anyhow, Context, Result};

/// User plus system CPU seconds of every thread of `pid` (`None`: this process).
pub fn cpu_seconds(pid: Option<u32>) -> Result<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_ticks(&text)
        .map(|ticks| ticks as f64 / clock_ticks_per_second())
        .ok_or_else(|| anyhow!("{path}: unexpected format"))
}

/// CPU seconds of a process and of its children, living and reaped: for
/// PostgreSQL's postmaster, the whole cluster (every backend, those that
/// have exited too, and the background processes).
pub fn tree_cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let fields = stat_fields(&text).ok_or_else(|| anyhow!("{path}: unexpected format"))?;
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // utime, stime, cutime, cstime.
    let mut ticks = [11, 12, 13, 14]
        .iter()
        .map(|&i| field(i))
        .sum::<Option<u64>>()
        .ok_or_else(|| anyhow!("{path}: unexpected format"))?;
    // A child that exits while this runs is missed, or counted twice: read
    // while none is exiting (see `children`).
    for text in children(pid)? {
        ticks += parse_stat_ticks(&text).unwrap_or(0);
    }
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// The /proc/PID/stat lines of the living children of `pid`.
pub fn children(pid: u32) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let name = entry?.file_name();
        let Some(child) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let parent = stat_fields(&text).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()));
        if parent == Some(pid) {
            found.push(text);
        }
    }
    Ok(found)
}

/// The fields of a /proc/PID/stat line after the command name: the state
/// is 0, the parent 1, utime 11.
fn stat_fields(text: &str) -> Option<Vec<&str>> {
    // The command name (field 2) may hold spaces and parentheses: count
    // fields from the last ')'.
    Some(text[text.rfind(')')? + 1..].split_whitespace().collect())
}

/// utime + stime (fields 14 and 15) from a /proc/PID/stat line.
fn parse_stat_ticks(text: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count
    // fields from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time the hypervisor gave to others while this machine wanted it, in
/// seconds summed over all CPUs (the `steal` column of /proc/stat).
pub fn steal_seconds() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_steal_ticks(&text)
        .map(|ticks| ticks as f64 / clock_ticks_per_second())
        .ok_or_else(|| anyhow!("/proc/stat: unexpected format"))
}

fn parse_steal_ticks(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Resident memory now and its peak, in KiB.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Memory {
    pub vm_rss_kib: u64,
    pub vm_hwm_kib: u64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Ok(Memory {
        vm_rss_kib: field("VmRSS:").ok_or_else(|| anyhow!("{path}: no VmRSS"))?,
        vm_hwm_kib: field("VmHWM:").ok_or_else(|| anyhow!("{path}: no VmHWM"))?,
    })
}

/// The machine, as far as the report needs it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model,
        memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let line = "1234 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 250 17 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_ticks(line), Some(267));
    }

    #[test]
    fn steal_is_the_eighth_cpu_column() {
        let stat =
            "cpu  405670 415 100147 375946 41327 0 25940 10033 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(parse_steal_ticks(stat), Some(10033));
        assert!(steal_seconds().unwrap() >= 0.0);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(cpu_seconds(None).unwrap() >= 0.0);
        let m = memory(std::process::id()).unwrap();
        assert!(m.vm_hwm_kib >= m.vm_rss_kib / 2 && m.vm_rss_kib > 0);
    }
}
