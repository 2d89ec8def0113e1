//! Helpers for the tests that run the `hybrid-chaos` binary: the binary's path and a
//! one-shot runner. The Redis and proxy helpers are the harness's (`support`), shared by path.
#![allow(dead_code)] // each test binary uses a different subset

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_hybrid-chaos");

/// Runs the binary to completion: (exit code, stdout, stderr).
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run hybrid-chaos");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// (arguments, environment, what stderr must say)
pub type BadInput<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

/// Each case must exit 2 with exactly one `hybrid-chaos: error` line saying `needle`.
pub fn assert_bad_input(cases: &[BadInput]) {
    for (args, env, needle) in cases {
        let (code, _, stderr) = cli(args, env);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        let errors = stderr.lines().filter(|l| l.starts_with("hybrid-chaos: error")).count();
        assert_eq!(errors, 1, "{args:?}: not one error line: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr:?} lacks {needle:?}");
    }
}
