//! The stale-account job: read many usernames, ask the server in batches over
//! several connections, print the unused ones in input order, and optionally
//! run a command for each (dry run unless `--yes`).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use usermetadb::wire::{GetUnusedAccountsRequest, GetUnusedAccountsResponse};

use crate::conn::{Api, Exit, Failure};
use crate::output::{csv_line, Format};

pub struct Job {
    pub days: i64,
    pub input: Option<std::path::PathBuf>,
    pub batch: usize,
    pub parallel: usize,
    pub exec: Vec<String>,
    pub yes: bool,
    pub format: Format,
}

/// Reads one username a line: surrounding whitespace trimmed, blank lines
/// skipped, duplicates dropped (first one kept). A name the server would
/// refuse is an error naming its line, before anything is sent.
pub fn read_names(input: &mut dyn BufRead, source: &str) -> Result<Vec<String>, Failure> {
    let mut names = Vec::new();
    let mut seen = HashSet::new();
    let mut buf = Vec::new();
    let mut line = 0usize;
    loop {
        buf.clear();
        line += 1;
        let n = input
            .read_until(b'\n', &mut buf)
            .map_err(|e| Failure::usage(format!("{source}: {e}")))?;
        if n == 0 {
            break;
        }
        let text = std::str::from_utf8(&buf)
            .map_err(|_| Failure::usage(format!("{source}:{line}: not UTF-8 text")))?;
        let name = text.trim();
        if name.is_empty() {
            continue;
        }
        usermetadb::service::check_username(name)
            .map_err(|e| Failure::usage(format!("{source}:{line}: {e}")))?;
        if seen.insert(name.to_owned()) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn progress(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} names checked ({percent}%), eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// Asks the server about every name; returns the unused ones in input order,
/// writing each to stdout as soon as every batch before it is answered.
async fn query(api: Arc<Api>, job: &Job, names: Vec<String>) -> Result<Vec<String>, Failure> {
    let total = names.len();
    let batches: VecDeque<(usize, Vec<String>)> = names
        .chunks(job.batch)
        .map(|c| c.to_vec())
        .enumerate()
        .collect();
    let count = batches.len();
    let queue = Arc::new(Mutex::new(batches));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let workers = job.parallel.min(count.max(1));
    let days = job.days;
    for _ in 0..workers {
        let queue = queue.clone();
        let tx = tx.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let mut conn = match api.connect().await {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send((usize::MAX, 0, Err(e)));
                    return;
                }
            };
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some((i, usernames)) = next else { break };
                let n = usernames.len();
                let req = GetUnusedAccountsRequest {
                    usernames: Some(usernames),
                    days,
                };
                let result = api
                    .call::<_, GetUnusedAccountsResponse>(
                        &mut conn,
                        "/api/get_unused_accounts",
                        &req,
                    )
                    .await
                    .map(|r| r.unused_usernames);
                let failed = result.is_err();
                if tx.send((i, n, result)).is_err() || failed {
                    break;
                }
            }
        });
    }
    drop(tx);

    let bar = progress(total as u64);
    let stdout = std::io::stdout();
    let mut done: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut next = 0;
    let mut unused = Vec::new();
    while next < count {
        let Some((i, n, result)) = rx.recv().await else {
            bar.abandon();
            return Err(Failure::new(
                Exit::Connection,
                "the connections to the server ended before every batch was answered",
            ));
        };
        let names = match result {
            Ok(names) => names,
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        };
        bar.inc(n as u64);
        done.insert(i, names);
        let mut out = stdout.lock();
        while let Some(names) = done.remove(&next) {
            if job.format != Format::Json {
                for name in &names {
                    let written = match job.format {
                        Format::Csv => writeln!(out, "{}", csv_line(std::slice::from_ref(name))),
                        _ => writeln!(out, "{name}"),
                    };
                    written.map_err(|e| Failure::usage(format!("writing the output: {e}")))?;
                }
            }
            unused.extend(names);
            next += 1;
        }
        out.flush()
            .map_err(|e| Failure::usage(format!("writing the output: {e}")))?;
    }
    bar.finish_and_clear();
    Ok(unused)
}

/// Runs the job: check every name, print the unused ones, then the `--exec` step.
pub async fn run(api: Api, job: Job) -> Result<(), Failure> {
    if job.batch == 0 || job.parallel == 0 {
        return Err(Failure::usage("--batch and --parallel must be at least 1"));
    }
    let names = match &job.input {
        None => read_names(&mut std::io::stdin().lock(), "stdin")?,
        Some(p) if p == Path::new("-") => read_names(&mut std::io::stdin().lock(), "stdin")?,
        Some(p) => {
            let f = std::fs::File::open(p)
                .map_err(|e| Failure::usage(format!("{}: {e}", p.display())))?;
            read_names(
                &mut std::io::BufReader::with_capacity(1 << 16, f),
                &p.display().to_string(),
            )?
        }
    };
    if job.format == Format::Csv {
        println!("username");
    }
    let checked = names.len();
    let unused = query(Arc::new(api), &job, names).await?;
    if job.format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&unused).unwrap_or_default()
        );
    }
    eprintln!(
        "{} of {checked} accounts unused for {} days",
        unused.len(),
        job.days
    );
    if job.exec.is_empty() {
        return Ok(());
    }
    let shown = job.exec.join(" ");
    if !job.yes {
        eprintln!(
            "dry run: would run `{shown} NAME` for each of the {} unused accounts; nothing was run (add --yes to run it)",
            unused.len()
        );
        return Ok(());
    }
    exec_all(&job.exec, &unused)
}

/// Runs `cmd… NAME` for each name, directly (no shell), one at a time. The
/// commands' own output goes to stderr so stdout stays the list of names.
fn exec_all(cmd: &[String], names: &[String]) -> Result<(), Failure> {
    let shown = cmd.join(" ");
    let (mut ok, mut failed) = (0usize, 0usize);
    for (i, name) in names.iter().enumerate() {
        let stdout = match stderr_handle() {
            Some(fd) => Stdio::from(fd),
            None => Stdio::null(),
        };
        let status = Command::new(&cmd[0])
            .args(&cmd[1..])
            .arg(name)
            .stdin(Stdio::null())
            .stdout(stdout)
            .status();
        match status {
            Ok(s) if s.success() => ok += 1,
            Ok(s) => {
                failed += 1;
                eprintln!("exec failed for {name}: {s}");
            }
            Err(e) => {
                let not_run = names.len() - i;
                eprintln!(
                    "exec: cannot run {}: {e}; stopped with {not_run} accounts not processed",
                    cmd[0]
                );
                eprintln!("exec `{shown} NAME`: {ok} ok, {failed} failed, {not_run} not run");
                return Err(Failure::new(
                    Exit::ExecFailed,
                    format!("cannot run {}: {e}", cmd[0]),
                ));
            }
        }
    }
    eprintln!("exec `{shown} NAME`: {ok} ok, {failed} failed");
    if failed > 0 {
        return Err(Failure::new(
            Exit::ExecFailed,
            format!(
                "the command failed for {failed} of {} accounts",
                names.len()
            ),
        ));
    }
    Ok(())
}

fn stderr_handle() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd;
    std::io::stderr().as_fd().try_clone_to_owned().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_deduplicated_and_checked_with_their_line() {
        let input = b"alice\r\n  bob \n\nalice\ncarol\n";
        let names = read_names(&mut &input[..], "list").unwrap();
        assert_eq!(names, ["alice", "bob", "carol"]);
        let bad = b"alice\nbo\x07b\n";
        let err = read_names(&mut &bad[..], "list").unwrap_err();
        assert_eq!(err.exit, Exit::Usage);
        assert!(err.message.starts_with("list:2: "), "{}", err.message);
        let err = read_names(&mut &b"ok\n\xff\n"[..], "list").unwrap_err();
        assert_eq!(err.message, "list:2: not UTF-8 text");
    }
}
