//! A run's output directory: named by time and seed, and created by that run alone.
//!
//! The name used to be only the second and the seed, made with `create_dir_all`: two runs
//! started in the same second with the same seed shared one directory, and the failure path
//! of one removed the other's live directory. Here the directory is made with one `mkdir`,
//! which fails if the name exists; a taken name gets the next suffix (`-2`, `-3`, ...). So
//! the directory belongs to this run, and removing it removes nothing of anyone else's.

use std::path::{Path, PathBuf};

/// Suffixes tried after the plain name before giving up: more runs than this in one second
/// with one seed under one `--out` is a loop, not a workload.
pub const NAME_ATTEMPTS_MAX: u32 = 1_000;

/// A run directory this process created. Dropped before [`RunDir::keep`], it removes itself
/// if still empty (a run whose Redis never started leaves nothing); one holding files (an
/// implementation's stderr) stays, since they tell why the run failed.
#[derive(Debug)]
pub struct RunDir {
    pub id: String,
    pub path: PathBuf,
    kept: bool,
}

impl RunDir {
    /// Creates `out/<prefix><time>-<seed>` (or the first free suffixed name), and `out` itself
    /// when missing; fails on an unwritable `out` before minutes are spent on the run.
    pub fn create(out: &Path, prefix: &str, seed: u64) -> anyhow::Result<RunDir> {
        std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("cannot write to {}: {e}", out.display()))?;
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "");
        let base = format!("{prefix}{stamp}-{seed:x}");
        for n in 1..=NAME_ATTEMPTS_MAX {
            let id = if n == 1 { base.clone() } else { format!("{base}-{n}") };
            let path = out.join(&id);
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(RunDir { id, path, kept: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => anyhow::bail!("cannot write to {}: {e}", path.display()),
            }
        }
        anyhow::bail!(
            "cannot create a run directory in {}: {base} and {NAME_ATTEMPTS_MAX} suffixes are taken",
            out.display()
        )
    }

    /// The run wrote its report: the directory stays whatever happens next.
    pub fn keep(&mut self) {
        self.kept = true;
    }

    /// Removes the directory and everything in it (it is this run's alone): for a run
    /// refused before it started, whose files say nothing the error does not.
    pub fn discard(mut self) {
        self.kept = true;
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.kept {
            // Fails, and keeps it, when files are in it.
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs in the same second with the same seed get their own directories; before, they
    /// shared one.
    #[test]
    fn runs_with_one_seed_in_one_second_do_not_share_a_directory() {
        let out = tempfile::tempdir().unwrap();
        let dirs: Vec<RunDir> = (0..5).map(|_| RunDir::create(out.path(), "", 7).unwrap()).collect();
        let mut paths: Vec<_> = dirs.iter().map(|d| d.path.clone()).collect();
        paths.dedup();
        assert_eq!(paths.len(), 5, "{paths:?}");
        assert!(dirs.iter().all(|d| d.path.is_dir() && out.path().join(&d.id) == d.path));
    }

    /// Dropped unkept: gone when empty, kept with files in it; kept: stays; discarded: gone.
    #[test]
    fn a_failed_start_leaves_no_empty_directory_and_removes_only_its_own() {
        let out = tempfile::tempdir().unwrap();
        let empty = RunDir::create(out.path(), "", 1).unwrap();
        let (empty_path, neighbour) = (empty.path.clone(), RunDir::create(out.path(), "", 1).unwrap());
        drop(empty);
        assert!(!empty_path.exists(), "an empty run directory was left");
        assert!(neighbour.path.is_dir(), "another run's directory was removed");
        let with_logs = RunDir::create(out.path(), "", 2).unwrap();
        std::fs::write(with_logs.path.join("impl.stderr"), "why it failed").unwrap();
        let logs = with_logs.path.clone();
        drop(with_logs);
        assert!(logs.join("impl.stderr").is_file(), "the failed run's logs went with it");
        let mut kept = RunDir::create(out.path(), "", 3).unwrap();
        kept.keep();
        let kept_path = kept.path.clone();
        drop(kept);
        assert!(kept_path.is_dir());
        let refused = RunDir::create(out.path(), "", 4).unwrap();
        std::fs::write(refused.path.join("x.stderr"), "").unwrap();
        let refused_path = refused.path.clone();
        refused.discard();
        assert!(!refused_path.exists());
        assert!(neighbour.path.is_dir());
    }
}
