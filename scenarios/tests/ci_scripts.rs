//! The shell helpers `./ci/test`, `./ci/chaos`, `./ci/properties` and `./ci/mutants` share
//! (`ci/lib.sh`), run for real: they find the binaries where cargo put them, and the leak
//! check counts only the redis servers the run itself started (the harness names their data
//! dirs after the run's tag; a server's working directory is its data dir).

use std::process::{Command, Stdio};

use harness::infra::{ProcessRedis, RedisSpec};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Runs `script` after sourcing ci/lib.sh, in the workspace root: (exit code, stdout, stderr).
fn lib_sh(script: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail; source ci/lib.sh; {script}"))
        .current_dir(root())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn the_target_dir_is_asked_of_cargo_not_assumed() {
    let dir = tempfile::tempdir().unwrap();
    let want = dir.path().to_string_lossy().into_owned();
    let (code, out, err) = lib_sh("hc_target_dir", &[("CARGO_TARGET_DIR", &want)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), want);
}

#[tokio::test]
async fn the_leak_check_counts_only_this_runs_servers() {
    // A server the run did not start (no tag in its environment) is none of its business,
    // and 5 s later the check must still pass.
    let unrelated = ProcessRedis::start(RedisSpec::default()).await.expect("start redis-server");
    let (code, _, err) = lib_sh("hc_tag_run; hc_check_no_leaked_redis", &[]);
    assert_eq!(code, 0, "an unrelated server failed the run: {err}");
    drop(unrelated);

    // A server started under the run's tag and still running is a leak, named by pid.
    let port = harness::infra::process::free_port().unwrap();
    let script = r#"
        hc_tag_run
        dir=$(mktemp -d "${TMPDIR:-/tmp}/hybrid-chaos-redis-$HC_RUN_TAG-XXXX")
        cd "$dir"
        redis-server --port PORT --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
        pid=$!
        for _ in $(seq 1 100); do [ -n "$(hc_run_redis_pids)" ] && break; sleep 0.05; done
        status=0; hc_check_no_leaked_redis || status=$?
        kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
        cd / && rm -rf "$dir"
        echo "pid=$pid status=$status"
    "#
    .replace("PORT", &port.to_string());
    let (code, out, err) = lib_sh(&script, &[]);
    assert_eq!(code, 0, "{err}");
    let pid = out.trim().strip_prefix("pid=").and_then(|r| r.split(' ').next()).unwrap_or("?").to_string();
    assert!(out.trim().ends_with("status=1"), "a leaked server passed the check: {out} {err}");
    assert!(err.contains(&format!("still running: {pid}")), "the leak is not named by pid: {err}");
    assert!(!err.contains("improper list"), "{err}");
}
